"""README.md's "Deploying on ECS" section stays true to the files it documents: every placeholder is listed,
the IAM authentication subsection puts the CA bundle where the task definition points the app, and the
cost table's arithmetic is recomputed here rather than trusted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import placeholders
import task_checks as tc
from deployments import DEPLOYMENTS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "README.md"
SECONDS_PER_DAY = 86_400
DAYS_PER_MONTH = 30
FLEET = 1_000
USD_PER_10K_CALLS = 0.05


def table_placeholders(doc: str) -> set[str]:
    return set(re.findall(r"^\| `(<[A-Z][A-Z0-9_]*>)` \|", doc, re.M))


def test_every_placeholder_of_the_files_is_in_the_docs_table_and_has_an_example():
    used = set()
    for files in DEPLOYMENTS.values():
        for name in files:
            used |= placeholders.placeholders_in((ROOT / name).read_text())
    listed = table_placeholders(DOC.read_text())
    assert used == listed, f"in the files but not the table: {used - listed}; in the table only: {listed - used}"
    assert used == set(placeholders.EXAMPLE_VALUES)


def section(doc: str, heading: str) -> str:
    """From `heading` to the next heading of the same or a higher level."""
    start = doc.index(f"\n{heading}\n")
    level = heading.split(" ")[0]
    end = re.search(rf"^#{{1,{len(level)}}} ", doc[start + len(heading) + 2 :], re.M)
    return doc[start : start + len(heading) + 2 + end.start()] if end else doc[start:]


def check_iam_section(doc: str, task_def: dict) -> list[str]:
    """The subsection copies the CA bundle into the app image at the path the task definition gives the
    app, shows that path as the hook's ca_file, and names both rds-iam files."""
    text = section(doc, "### IAM authentication")
    ca = tc.env_of(tc.container(task_def, tc.APP)).get(tc.CA_FILE_VAR, "<none>")
    problems = []
    if not re.search(rf"^ *(?:COPY|ADD) +(?:--\S+ +)*\S*global-bundle\.pem +{re.escape(ca)}$", text, re.M):
        problems.append(f"no COPY/ADD of global-bundle.pem to {ca} in the app's Dockerfile snippet")
    if not re.search(rf"^ *ca_file: .*{re.escape(tc.CA_FILE_VAR)}.*{re.escape(ca)}", text, re.M):
        problems.append(f"the hook's config does not show ca_file from {tc.CA_FILE_VAR} ({ca})")
    for name in DEPLOYMENTS["rds-iam"]:
        if f"`{name}`" not in text:
            problems.append(f"{name} is not named")
    return problems


def test_iam_section_matches_the_rds_iam_task_definition():
    td = json.loads((ROOT / DEPLOYMENTS["rds-iam"].task_def).read_text())
    assert check_iam_section(DOC.read_text(), td) == []


@pytest.mark.parametrize(
    "old, new",
    [
        ("COPY global-bundle.pem /rds-ca/", "COPY global-bundle.pem /etc/rds-ca/"),  # the image has it elsewhere
        ('ca_file: <%= ENV.fetch("SECRETS_SIDECAR_CA_FILE"', 'ca_file: <%= ENV.fetch("RDS_CA_FILE"'),
        ("`iam-policy.rds-iam.json`", "`iam-policy.json`"),
    ],
)
def test_iam_section_check_catches(old, new):
    doc = DOC.read_text()
    td = json.loads((ROOT / DEPLOYMENTS["rds-iam"].task_def).read_text())
    assert old in section(doc, "### IAM authentication")
    assert check_iam_section(doc.replace(old, new), td) != []


def n(text: str) -> float:
    return float(text.replace(",", "").replace("$", ""))


def check_cost_table(doc: str) -> list[str]:
    rows = re.findall(r"^\| (\d+) s(?: \(default\))? \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| (\$[\d,.]+) \|$", doc, re.M)
    if not rows:
        return ["no cost table rows found"]
    problems = []
    for interval, per_day, per_month, fleet, cost in rows:
        want_day = SECONDS_PER_DAY / int(interval)
        want = (want_day, want_day * DAYS_PER_MONTH, want_day * DAYS_PER_MONTH * FLEET)
        want_cost = want[2] / 10_000 * USD_PER_10K_CALLS
        got = (n(per_day), n(per_month), n(fleet))
        if got != want:
            problems.append(f"{interval} s: calls {got} should be {want}")
        if abs(n(cost) - want_cost) > 0.005:
            problems.append(f"{interval} s: cost {cost} should be ${want_cost:,.2f}")
    if "60" not in [r[0] for r in rows]:
        problems.append("the table lacks the default interval, 60 s")
    return problems


def test_cost_table_arithmetic():
    doc = DOC.read_text()
    assert check_cost_table(doc) == []
    assert "| 60 s (default) | 1,440 | 43,200 | 43,200,000 | $216.00 |" in doc


@pytest.mark.parametrize(
    "old, new",
    [
        ("| 1,440 | 43,200 |", "| 1,440 | 44,640 |"),  # a 31-day month slipped in
        ("| $216.00 |", "| $21.60 |"),
        ("| 300 s | 288 |", "| 300 s | 290 |"),
    ],
)
def test_cost_table_check_catches(old, new):
    doc = DOC.read_text()
    assert old in doc
    assert check_cost_table(doc.replace(old, new)) != []


def test_no_unfilled_measurement_left():
    assert "RELEASE_SIZE" not in DOC.read_text(), "fill in the image's size from the image test (tests/image)"
