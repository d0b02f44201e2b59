"""Tab-separated tables (participants TSVs, group data.tsv) read as rows of strings.

Values are kept verbatim (no float round trip); a leading unnamed column (the pandas index that
ClinicaDL writes in groups/train and groups/validation) is ignored like any other extra column.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

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
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise MapsInterpretError(f"{path} is empty: expected a header line and one line per session")
            columns = tuple(name.strip() for name in header)
            rows = []
            for number, values in enumerate(reader, start=2):
                if not any(v.strip() for v in values):
                    continue  # blank line
                if len(values) != len(columns):
                    raise MapsInterpretError(
                        f"{path}, line {number}: {len(values)} tab-separated values for {len(columns)} columns")
                rows.append({c: v.strip() for c, v in zip(columns, values)})
    except FileNotFoundError:
        raise MapsInterpretError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise MapsInterpretError(f"{path} is a folder, not a TSV file") from None
    except UnicodeDecodeError:
        raise MapsInterpretError(f"{path} is not a UTF-8 text file") from None
    except csv.Error as error:
        raise MapsInterpretError(f"{path} is not a valid TSV file: {error}") from None
    except OSError as error:
        raise MapsInterpretError(f"cannot read {path}: {error.strerror}") from None
    return Table(path=path, columns=columns, rows=tuple(rows))
