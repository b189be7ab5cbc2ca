"""docs/RESULTS.md keeps its word: it opens with the claims table, every docs/bench file it names
exists, and each claim that quotes a comparison quotes it exactly as its JSON file holds it.

For a row of the claims table whose JSON file is a `*_comparisons.json` and whose comparison
column names a record of it (the record's exact `comparison` string, with the row's metric and
split, and its adaptation where the name alone is ambiguous):
- the figure "A - B [low, high]" equals the record's `diff`, `ci_low`, `ci_high` in points (x100)
  rounded to one decimal;
- the seeds column starts with the record's `n_seeds`;
- the verdict says what the record allows: records written with issue 31's interval carry
  `resolved_holm` ("resolved after Holm" or "not resolved"); older records (the bootstrap over
  seeds) must say "old interval" and take the verdict docs/bench/verdict_audit.csv leaves them
  ("not resolved" where the audit finds them not resolved or lost, naming "lost" or "lost after
  Holm"; "open" where it finds them open), never "resolved".

Plain file parsing (standard library only, no project imports): fast enough to run with every change.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "RESULTS.md"
BENCH = DOCS / "bench"
AUDIT = BENCH / "verdict_audit.csv"

# docs/bench/<name> anywhere in the text, or a Markdown link target bench/<name> (RESULTS is in docs/)
BENCH_NAME = re.compile(r"(?:docs/bench/|\]\(bench/)([^\s()\[\]`'\"<>|,;]*)")
SHELL_VARIABLE = re.compile(r"\$\{\w+\}|\$\w+")
NUMBER = r"([+-]?\d+(?:\.\d+)?)"
FIGURE = re.compile(NUMBER + r" \[" + NUMBER + r", " + NUMBER + r"\]")
JSON_LINK = re.compile(r"bench/([\w.\-]+\.json)")


# ---------------------------------------------------------------------------------------------
# helpers


def bench_names(text: str) -> list[str]:
    """Every docs/bench file (or glob) the text names; shell variables become wildcards."""
    names = []
    for match in BENCH_NAME.finditer(text):
        name = SHELL_VARIABLE.sub("*", match.group(1)).rstrip(".:")
        names.append(name)
    return names


def missing_bench_files(text: str, bench: Path = BENCH) -> list[str]:
    """The names of `bench_names(text)` that match no file (a bare `bench/` must be the folder)."""
    missing = []
    for name in bench_names(text):
        if not name:
            found = bench.is_dir()
        elif "*" in name or "?" in name:
            found = any(bench.glob(name))
        else:
            found = (bench / name).is_file()
        if not found:
            missing.append(name)
    return missing


def first_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first Markdown table in the text (outside code blocks)."""
    lines, in_code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    assert len(lines) >= 3, "no table found"

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    header, rows = cells(lines[0]), [cells(line) for line in lines[2:]]
    for row in rows:
        assert len(row) == len(header), f"a row has {len(row)} cells, the header {len(header)}: {row}"
    return header, rows


def column(header: list[str], *words: str) -> int:
    """The index of the header cell named one of `words`, else of the first that contains one."""
    names = [name.lower() for name in header]
    for word in words:
        if word.lower() in names:
            return names.index(word.lower())
    for index, name in enumerate(names):
        if any(word.lower() in name for word in words):
            return index
    raise AssertionError(f"no column named like {words} in {header}")


def load_records(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return data["comparisons"] if isinstance(data, dict) else data


def load_audit(path: Path = AUDIT) -> dict[tuple, str]:
    with path.open(newline="") as handle:
        return {(row["file"], row["comparison"], row["split"], row["metric"], row["adaptation"] or ""): row["now"]
                for row in csv.DictReader(handle)}


def points(value: float) -> float:
    """A fraction as points, rounded to one decimal as RESULTS prints it."""
    return float(f"{value * 100:.1f}")


def metric_and_split(cell: str) -> tuple[str, str]:
    cell = cell.lower()
    metric = "mAP" if "map" in cell else "rank1"
    split = "val" if "validation" in cell else "test"
    return metric, split


def adaptation_of(cell: str) -> str | None:
    cell = cell.lower()
    if "unsupervised" in cell:
        return "unsupervised"
    return "supervised" if "supervised" in cell else None


def verdict_problem(verdict: str, record: dict, audit_now: str | None) -> str | None:
    """Why `verdict` does not say what `record` (and the audit, for old records) allows, or None."""
    said = verdict.lower()
    if "resolved_holm" in record:
        if record["resolved_holm"]:
            return None if said.startswith("resolved after holm") else "the JSON says resolved after Holm"
        return None if said.startswith("not resolved") else "the JSON says not resolved after Holm"
    if "old interval" not in said:
        return "an old-interval record must say 'old interval'"
    if said.startswith("resolved"):
        return "an old-interval record cannot be stated as resolved"
    if audit_now is None:
        return "the record is missing from verdict_audit.csv"
    if audit_now.startswith("open"):
        return None if said.startswith("open") else f"the audit says {audit_now!r}"
    if audit_now.startswith("one seed"):
        return None if "one seed" in said else "the audit says one seed: no verdict"
    if not said.startswith("not resolved"):
        return f"the audit says {audit_now!r}"
    if audit_now == "lost after Holm" and "lost after holm" not in said:
        return "the audit says lost after Holm"
    if audit_now == "lost" and ("lost" not in said or "after holm" in said):
        return "the audit says lost (to the seed term alone)"
    return None


def claims_problems(text: str, bench: Path = BENCH) -> tuple[list[str], int]:
    """(problems, number of comparison rows checked) for the claims table of a RESULTS text."""
    header, rows = first_table(text)
    at = {"json": column(header, "json"), "comparison": column(header, "comparison"),
          "metric": column(header, "metric"), "figure": column(header, "figure", "interval"),
          "verdict": column(header, "verdict"), "seeds": column(header, "seeds"),
          "profile": column(header, "profile")}
    audit = load_audit(bench / AUDIT.name)
    problems, checked = [], 0
    for row in rows:
        claim = row[0][:60]
        links = JSON_LINK.findall(row[at["json"]])
        if not links:
            problems.append(f"{claim}: no JSON file in the JSON column")
            continue
        for name in links:
            if not (bench / name).is_file():
                problems.append(f"{claim}: {name} does not exist")
        name, comparison = links[0], row[at["comparison"]]
        if not name.endswith("_comparisons.json") or not comparison or not (bench / name).is_file():
            continue
        metric, split = metric_and_split(row[at["metric"]])
        matches = [record for record in load_records(bench / name)
                   if record["comparison"] == comparison and record["metric"] == metric
                   and record.get("split", "test") == split]
        adaptation = adaptation_of(row[at["profile"]])
        if len(matches) > 1 and adaptation:
            matches = [record for record in matches if record.get("adaptation") == adaptation]
        if len(matches) != 1:
            problems.append(f"{claim}: {len(matches)} records of {name} match {comparison!r} ({metric}, {split})")
            continue
        record, checked = matches[0], checked + 1
        figure = FIGURE.search(row[at["figure"]])
        if not figure:
            problems.append(f"{claim}: no 'A - B [low, high]' figure")
        else:
            quoted = tuple(float(value) for value in figure.groups())
            expected = (points(record["diff"]), points(record["ci_low"]), points(record["ci_high"]))
            if quoted != expected:
                problems.append(f"{claim}: quotes {quoted}, {name} holds {expected}")
        seeds = re.match(r"\s*(\d+)", row[at["seeds"]])
        if not seeds or int(seeds.group(1)) != record["n_seeds"]:
            problems.append(f"{claim}: seeds {row[at['seeds']]!r}, {name} has n_seeds {record['n_seeds']}")
        key = (name, comparison, record.get("split", "test"), metric, record.get("adaptation") or "")
        problem = verdict_problem(row[at["verdict"]], record, audit.get(key))
        if problem:
            problems.append(f"{claim}: verdict {row[at['verdict']]!r}: {problem}")
    return problems, checked


# ---------------------------------------------------------------------------------------------
# the checks on the real file


def test_results_opens_with_the_claims_table():
    text = RESULTS.read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings and headings[0].strip() == "## Claims", headings[:1]
    before_table = text.split("\n|", 1)[0]
    assert before_table.count("\n## ") == 1, "the claims table must be the first table, under '## Claims'"


def test_every_bench_file_results_names_exists():
    text = RESULTS.read_text()
    assert len(bench_names(text)) >= 40, "the extractor found too few names: is it still reading RESULTS?"
    assert missing_bench_files(text) == []


def test_history_names_no_missing_bench_file():
    assert missing_bench_files((DOCS / "history.md").read_text()) == []


def test_claims_table_quotes_its_comparison_files_exactly():
    problems, checked = claims_problems(RESULTS.read_text())
    assert problems == []
    assert checked >= 15, f"only {checked} claims were checked against their JSON"


# ---------------------------------------------------------------------------------------------
# self-checks: the checks above fail when the thing they name breaks


def test_self_check_a_missing_bench_file_is_caught():
    text = "Raw: [a](bench/calibrate_full.json), docs/bench/not_there.json and docs/bench/nothing_*.png."
    assert bench_names(text) == ["calibrate_full.json", "not_there.json", "nothing_*.png"]
    assert missing_bench_files(text) == ["not_there.json", "nothing_*.png"]
    assert missing_bench_files("docs/bench/latency_${RT}_round$R.json") == []


def _claims_section(text: str) -> str:
    return text.split("\n## ", 2)[1]


def _corrupt(text: str, old: str, new: str) -> str:
    section = _claims_section(text)
    assert old in section, old
    return text.replace(section, section.replace(old, new, 1), 1)


def _claim_row(text: str, comparison: str) -> str:
    return next(line for line in _claims_section(text).splitlines() if f"| {comparison} |" in line)


def _figure(row: str) -> tuple[float, float, float]:
    diff, low, high = re.search(r"\| ([+-]?\d+\.\d) \[([+-]?\d+\.\d), ([+-]?\d+\.\d)\] \|", row).groups()
    return float(diff), float(low), float(high)


@pytest.mark.parametrize("comparison, moved", [("prune_during[plfp] vs adapt_only", "difference"),
                                                 ("prune_during[plfp] vs small_dense", "interval")])
def test_self_check_a_wrong_difference_or_interval_is_caught(comparison, moved):
    text = RESULTS.read_text()
    row = _claim_row(text, comparison)
    diff, low, high = _figure(row)
    wrong_diff, wrong_high = (diff - 0.1, high) if moved == "difference" else (diff, high - 0.1)
    quoted = f"| {diff:+.1f} [{low:+.1f}, {high:+.1f}] |"
    wrong = f"| {wrong_diff:+.1f} [{low:+.1f}, {wrong_high:+.1f}] |"
    problems, _ = claims_problems(text.replace(row, row.replace(quoted, wrong), 1))
    said = f"quotes ({wrong_diff:.1f}, {low:.1f}, {wrong_high:.1f})"
    assert any(said in problem and f"holds ({diff:.1f}, {low:.1f}, {high:.1f})" in problem for problem in problems), \
        problems


def test_self_check_a_wrong_verdict_is_caught():
    text = RESULTS.read_text()
    # a not-resolved comparison of the current grid stated as resolved
    row = next(line for line in _claims_section(text).splitlines() if "| prune_during[plfp] vs small_dense |" in line)
    wrong = text.replace(row, row.replace("| not resolved |", "| resolved after Holm |"), 1)
    problems, _ = claims_problems(wrong)
    assert any("the JSON says not resolved after Holm" in problem for problem in problems), problems
    # an old verdict that the audit finds lost, stated as resolved or as open
    row = next(line for line in _claims_section(text).splitlines() if "| adapt_only_per_epoch vs adapt_only |" in line)
    for said in ("resolved (old interval)", "open (old interval; audit: re-run to decide)"):
        wrong = text.replace(row, row.replace("not resolved (old interval; audit: lost)", said), 1)
        problems, _ = claims_problems(wrong)
        assert any(problem.startswith("Without labels, re-clustering") and "verdict" in problem
                   for problem in problems), (said, problems)


def test_self_check_wrong_seeds_and_unknown_comparisons_are_caught():
    text = RESULTS.read_text()
    row = _claim_row(text, "prune_before[plfp] vs prune_after[plfp]")
    seeds = int(re.search(r"\| (\d+) \((\d+)-(\d+)\) \|", row).group(1))
    problems, _ = claims_problems(text.replace(row, re.sub(r"\| \d+ \((\d+)-(\d+)\) \|", f"| {seeds + 1} (0-{seeds}) |", row), 1))
    assert any(f"n_seeds {seeds}" in problem for problem in problems), problems
    problems, _ = claims_problems(text.replace(row, row.replace("prune_before[plfp] vs prune_after[plfp]",
                                                                 "prune_before vs prune_after"), 1))
    assert any("0 records" in problem for problem in problems), problems
