from .cli.interpret import entry

entry()
