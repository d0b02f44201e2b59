"""Tab-separated tables (participants TSVs, group data.tsv), read and written with pandas as ClinicaDL
reads and writes them, as rows of strings.

Values are kept verbatim (`dtype=str`, no NA conversion: no float round trip, "NA" stays "NA"); a
leading unnamed column (the pandas index that ClinicaDL writes in groups/train and groups/validation) keeps
its empty name and is ignored like any other extra column. pandas accepts ragged lines silently (it fills
short ones and takes an extra first field for an index), so the shape of every line is checked first, for
the one-line errors below.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import MapsInterpretError


@dataclass(frozen=True)
class Table:
    path: Path
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]

    def require(self, *columns: str) -> None:
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise MapsInterpretError(
                f"{self.path} lacks the column(s) {', '.join(missing)}: its header is "
                f"{', '.join(repr(c) for c in self.columns) or '(empty)'}; columns are separated by tabs")


def read_table(path: Path) -> Table:
    import pandas as pd

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MapsInterpretError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise MapsInterpretError(f"{path} is a folder, not a TSV file") from None
    except UnicodeDecodeError:
        raise MapsInterpretError(f"{path} is not a UTF-8 text file") from None
    except OSError as error:
        raise MapsInterpretError(f"cannot read {path}: {error.strerror}") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise MapsInterpretError(f"{path} is empty: expected a header line and one line per session")
    header = [name.strip() for name in lines[0][1].split("\t")]
    for number, line in lines[1:]:
        if line.count("\t") + 1 != len(header):
            raise MapsInterpretError(f"{path}, line {number}: {line.count(chr(9)) + 1} tab-separated values for "
                                     f"{len(header)} columns")
    try:
        # Exactly the lines checked above (blank ones, even with tabs, left out as before): pandas and this
        # check must agree on what a line is.
        frame = pd.read_csv(io.StringIO("\n".join(line for _, line in lines) + "\n"), sep="\t", dtype=str,
                            keep_default_na=False, na_filter=False, index_col=False, quoting=csv.QUOTE_NONE)
    except (pd.errors.ParserError, ValueError) as error:
        raise MapsInterpretError(f"{path} is not a valid TSV file: {str(error).strip()}") from None
    frame.columns = header  # as written: pandas would rename an empty name "Unnamed: 0", and mangle repeats
    rows = tuple({column: value.strip() for column, value in zip(header, values)}
                 for values in frame.itertuples(index=False, name=None))
    return Table(path=path, columns=tuple(header), rows=rows)


def tsv_text(columns: list[str], rows: Iterable[dict[str, str]]) -> str:
    """A table as ClinicaDL writes a group's data.tsv (`to_csv(sep="\t", index=False)`)."""
    import pandas as pd

    frame = pd.DataFrame([[str(row.get(column, "")) for column in columns] for row in rows], columns=columns)
    return frame.to_csv(sep="\t", index=False, lineterminator="\n")
