"""The SPO paper's own numbers (arXiv 2406.04314 v3) as typed, validated data.

The numbers live in ``data/paper/tables.yaml`` (Tables 1-9, the user study of Figure 6 and the
compute paragraph of §5.4), each with its source; this module loads that file and checks it::

    numbers = load_paper_numbers()
    numbers.tables[6].value("k2", "PickScore")      # 21.37
    numbers.user_study.comparisons[0].results["visual_appeal"].win

Every check failure is a ``PaperNumbersError`` naming the entry (``tables[6].rows[k2]...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "data" / "paper" / "tables.yaml"
PAPER_VERSION = "v3"


class PaperNumbersError(ValueError):
    """The paper-numbers file is malformed; the message names the entry."""


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    decimals: int


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    values: dict[str, float]
    latex: str | None = None


@dataclass(frozen=True)
class PaperTable:
    number: int
    title: str
    caption: str
    setting: str
    row_header: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    source: dict[str, Any]
    notes: str = ""

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(f"Table {self.number} has no row '{key}'; rows: "
                       f"{', '.join(r.key for r in self.rows)}")

    def value(self, row: str, column: str) -> float:
        return self.row(row).values[column]

    def column(self, key: str) -> Column:
        return next(c for c in self.columns if c.key == key)

    def cite(self) -> str:
        return (f"arXiv 2406.04314{self.source['version']}, Table {self.source['table']}; "
                f"transcribed in {self.source['section']}")


@dataclass(frozen=True)
class Outcome:
    win: float
    draw: float
    loss: float


@dataclass(frozen=True)
class Comparison:
    key: str
    label: str
    results: dict[str, Outcome]


@dataclass(frozen=True)
class UserStudy:
    source: dict[str, Any]
    raters: int
    pairs: int
    prompts: str
    questions: tuple[str, ...]
    comparisons: tuple[Comparison, ...]


@dataclass(frozen=True)
class ComputeEntry:
    spo_finetune_hours: float
    spm_train_hours: float
    diffusion_dpo_gpu_hours: float
    spo_share_of_diffusion_dpo_percent: float

    def spo_gpu_hours(self, num_gpus: int) -> float:
        return num_gpus * (self.spo_finetune_hours + self.spm_train_hours)


@dataclass(frozen=True)
class Compute:
    source: dict[str, Any]
    quote: str
    gpu: str
    num_gpus: int
    models: dict[str, ComputeEntry]
    notes: str = ""


@dataclass(frozen=True)
class PaperNumbers:
    source: dict[str, Any]
    metric_versions: dict[str, str]
    tables: dict[int, PaperTable]
    user_study: UserStudy
    compute: Compute


def _float(value: Any, where: str) -> float:
    if not isinstance(value, float) or isinstance(value, bool):
        raise PaperNumbersError(f"{where} is {value!r} ({type(value).__name__}); every paper number "
                                f"must be written as a float (e.g. 12.0)")
    return value


def _need(mapping: Any, keys: list[str], where: str) -> None:
    if not isinstance(mapping, dict):
        raise PaperNumbersError(f"{where} must be a mapping, got {type(mapping).__name__}")
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise PaperNumbersError(f"{where} is missing {', '.join(missing)}")


def _source(data: Any, where: str, kind: str) -> dict[str, Any]:
    _need(data, [kind, "version", "section"], f"{where}.source")
    if data["version"] != PAPER_VERSION:
        raise PaperNumbersError(f"{where}.source.version is {data['version']!r}; the harness targets "
                                f"the paper's {PAPER_VERSION}")
    return dict(data)


def _table(data: Any, where: str) -> PaperTable:
    _need(data, ["number", "source", "title", "caption", "setting", "row_header", "columns", "rows"], where)
    number = data["number"]
    source = _source(data["source"], where, "table")
    if source["table"] != number:
        raise PaperNumbersError(f"{where}.source.table is {source['table']} but number is {number}")
    columns = []
    for i, col in enumerate(data["columns"] or []):
        _need(col, ["key", "label", "decimals"], f"{where}.columns[{i}]")
        columns.append(Column(str(col["key"]), str(col["label"]), int(col["decimals"])))
    if not columns:
        raise PaperNumbersError(f"{where} has no columns")
    keys = [c.key for c in columns]
    if len(set(keys)) != len(keys):
        raise PaperNumbersError(f"{where}.columns repeat a key: {keys}")
    rows = []
    for i, row in enumerate(data["rows"] or []):
        _need(row, ["key", "label", "values"], f"{where}.rows[{i}]")
        rwhere = f"{where}.rows[{row['key']}]"
        values = row["values"]
        _need(values, keys, f"{rwhere}.values")
        extra = sorted(set(values) - set(keys))
        if extra:
            raise PaperNumbersError(f"{rwhere}.values has keys {extra} that are not columns {keys}")
        rows.append(Row(str(row["key"]), str(row["label"]),
                        {k: _float(values[k], f"{rwhere}.values.{k}") for k in keys}, row.get("latex")))
    if not rows:
        raise PaperNumbersError(f"{where} has no rows")
    if len({r.key for r in rows}) != len(rows):
        raise PaperNumbersError(f"{where}.rows repeat a key: {[r.key for r in rows]}")
    return PaperTable(number, data["title"], data["caption"], data["setting"], data["row_header"],
                      tuple(columns), tuple(rows), source, data.get("notes", ""))


def _user_study(data: Any) -> UserStudy:
    where = "user_study"
    _need(data, ["source", "raters", "pairs", "prompts", "questions", "comparisons"], where)
    source = _source(data["source"], where, "figure")
    questions = tuple(data["questions"])
    comparisons = []
    for comp in data["comparisons"]:
        _need(comp, ["key", "label", "results"], f"{where}.comparisons")
        cwhere = f"{where}.comparisons[{comp['key']}]"
        _need(comp["results"], list(questions), f"{cwhere}.results")
        results = {}
        for q in questions:
            r = comp["results"][q]
            _need(r, ["win", "draw", "loss"], f"{cwhere}.results.{q}")
            outcome = Outcome(*(_float(r[k], f"{cwhere}.results.{q}.{k}") for k in ("win", "draw", "loss")))
            total = outcome.win + outcome.draw + outcome.loss
            if abs(total - 100.0) > 0.05:
                raise PaperNumbersError(f"{cwhere}.results.{q}: win + draw + loss = {total:.2f}, not 100")
            results[q] = outcome
        comparisons.append(Comparison(comp["key"], comp["label"], results))
    return UserStudy(source, int(data["raters"]), int(data["pairs"]), data["prompts"], questions,
                     tuple(comparisons))


def _compute(data: Any) -> Compute:
    where = "compute"
    _need(data, ["source", "quote", "gpu", "num_gpus", "models"], where)
    source = _source(data["source"], where, "paragraph")
    fields = ["spo_finetune_hours", "spm_train_hours", "diffusion_dpo_gpu_hours",
              "spo_share_of_diffusion_dpo_percent"]
    models = {}
    for name, entry in data["models"].items():
        _need(entry, fields, f"{where}.models.{name}")
        models[name] = ComputeEntry(*(_float(entry[f], f"{where}.models.{name}.{f}") for f in fields))
        share = 100.0 * models[name].spo_gpu_hours(data["num_gpus"]) / models[name].diffusion_dpo_gpu_hours
        if abs(share - models[name].spo_share_of_diffusion_dpo_percent) > 0.05:
            raise PaperNumbersError(f"{where}.models.{name}: {data['num_gpus']} x (fine-tune + SPM) hours "
                                    f"is {share:.2f} % of Diffusion-DPO's, not the stated "
                                    f"{models[name].spo_share_of_diffusion_dpo_percent} %")
    return Compute(source, data["quote"], data["gpu"], int(data["num_gpus"]), models, data.get("notes", ""))


def parse_paper_numbers(data: Any) -> PaperNumbers:
    _need(data, ["source", "metric_versions", "tables", "user_study", "compute"], "<top level>")
    if data["source"].get("version") != PAPER_VERSION:
        raise PaperNumbersError(f"source.version is {data['source'].get('version')!r}, not {PAPER_VERSION}")
    tables: dict[int, PaperTable] = {}
    for i, entry in enumerate(data["tables"]):
        table = _table(entry, f"tables[{entry.get('number', i) if isinstance(entry, dict) else i}]")
        if table.number in tables:
            raise PaperNumbersError(f"tables: Table {table.number} appears twice")
        tables[table.number] = table
    return PaperNumbers(dict(data["source"]), dict(data["metric_versions"]), tables,
                        _user_study(data["user_study"]), _compute(data["compute"]))


def load_paper_numbers(path: str | Path | None = None) -> PaperNumbers:
    """Read and check ``data/paper/tables.yaml`` (or ``path``)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise PaperNumbersError(f"paper numbers file '{path}' does not exist")
    return parse_paper_numbers(yaml.safe_load(path.read_text()))
