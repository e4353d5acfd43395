"""The docs stay true to the files they document and reachable from the README.

docs/ecs.md, docs/rds-iam.md and docs/failover.md list every placeholder of the deployment files; docs/rds-iam.md's
"Deploying with IAM authentication" puts the CA bundle where the task definition points the app;
docs/operations.md's cost table is recomputed here rather than trusted. The README stays a short page
that links every docs/ page, and no relative link or #anchor in the README or docs/ leads nowhere.
Each rule is a function over the text, so the negative controls can run it on mutated copies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import placeholders
import task_checks as tc
from deployments import DEPLOYMENTS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ECS_DOC = ROOT / "docs" / "ecs.md"
IAM_DOC = ROOT / "docs" / "rds-iam.md"
FAILOVER_DOC = ROOT / "docs" / "failover.md"
OPS_DOC = ROOT / "docs" / "operations.md"
IAM_HEADING = "## Deploying with IAM authentication"
README_MAX_LINES = 300
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
    listed = set().union(*(table_placeholders(d.read_text()) for d in (ECS_DOC, IAM_DOC, FAILOVER_DOC)))
    assert used == listed, f"in the files but not the table: {used - listed}; in the table only: {listed - used}"
    assert used == set(placeholders.EXAMPLE_VALUES)


def section(doc: str, heading: str) -> str:
    """From `heading` to the next heading of the same or a higher level."""
    start = doc.index(f"\n{heading}\n")
    level = heading.split(" ")[0]
    end = re.search(rf"^#{{1,{len(level)}}} ", doc[start + len(heading) + 2 :], re.M)
    return doc[start : start + len(heading) + 2 + end.start()] if end else doc[start:]


def check_iam_section(doc: str, task_def: dict) -> list[str]:
    """The section copies the CA bundle into the app image at the path the task definition gives the
    app, shows that path as the hook's ca_file, and names both rds-iam files."""
    text = section(doc, IAM_HEADING)
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
    assert check_iam_section(IAM_DOC.read_text(), td) == []


@pytest.mark.parametrize(
    "old, new",
    [
        ("COPY global-bundle.pem /rds-ca/", "COPY global-bundle.pem /etc/rds-ca/"),  # the image has it elsewhere
        ('ca_file: <%= ENV.fetch("SECRETS_SIDECAR_CA_FILE"', 'ca_file: <%= ENV.fetch("RDS_CA_FILE"'),
        ("`iam-policy.rds-iam.json`", "`iam-policy.json`"),
    ],
)
def test_iam_section_check_catches(old, new):
    doc = IAM_DOC.read_text()
    td = json.loads((ROOT / DEPLOYMENTS["rds-iam"].task_def).read_text())
    assert old in section(doc, IAM_HEADING)
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
    doc = OPS_DOC.read_text()
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
    doc = OPS_DOC.read_text()
    assert old in doc
    assert check_cost_table(doc.replace(old, new)) != []


# --- The README as the way in: short, every page linked, every link leads somewhere ---------------------


def docs_tree() -> dict[str, str]:
    """README.md and every docs/*.md, by path relative to the repository, as the checks below take them."""
    pages = {"README.md": README.read_text()}
    for page in sorted((ROOT / "docs").glob("*.md")):
        pages[page.relative_to(ROOT).as_posix()] = page.read_text()
    return pages


def test_no_unfilled_measurement_left():
    for path, text in docs_tree().items():
        assert "RELEASE_SIZE" not in text, f"{path}: fill in the image's size from the image test (tests/image)"


FENCE = re.compile(r"^ *(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a shell block is not a heading, and a
    `[x](y)` in a code sample is not a link)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, every character that is not a letter, a digit,
    `_`, `-` or a space dropped (backticks, `:`, `=`, `/`, `.` included), spaces turned into `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(text):
        m = re.match(r"^#{1,6} +(.*?) *#*$", line)
        if m:
            base = slug(m.group(1))
            out.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return out


def links(text: str) -> list[str]:
    """Link targets outside code; a link's text may run over a line break."""
    prose = "\n".join(CODE_SPAN.sub("x", line) for line in prose_lines(text))
    return [m.group(1) for m in LINK.finditer(prose)]


def check_links(pages: dict[str, str]) -> list[str]:
    """Every relative link of every page names a file of the repository that exists and, with `#anchor`,
    a heading of that file (taken from `pages`, so a mutated copy is checked against its own headings)."""
    problems = []
    for path, text in pages.items():
        for target in links(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: — not ours to check
                continue
            file, _, anchor = target.partition("#")
            resolved = path
            if file:
                full = (ROOT / Path(path).parent / file).resolve()
                if not full.is_relative_to(ROOT) or not full.exists():
                    problems.append(f"{path}: link to {target}: no such file in the repository")
                    continue
                resolved = full.relative_to(ROOT).as_posix()
            if anchor and resolved not in pages:
                problems.append(f"{path}: link to {target}: anchors are checked in README.md and docs/ only")
            elif anchor and anchor not in anchors(pages[resolved]):
                problems.append(f"{path}: link to {target}: {resolved} has no heading #{anchor}")
    return problems


def check_every_page_linked(pages: dict[str, str]) -> list[str]:
    """Every docs/*.md page is the target of a link in the README."""
    targets = {t.partition("#")[0] for t in links(pages["README.md"])}
    return [f"README.md does not link {p}" for p in pages if p != "README.md" and p not in targets]


def check_readme_length(readme: str) -> list[str]:
    count = len(readme.splitlines())
    return [] if count < README_MAX_LINES else [f"README.md has {count} lines; keep it under {README_MAX_LINES}"]


def test_readme_is_under_300_lines():
    assert check_readme_length(README.read_text()) == []


def test_readme_length_check_catches_a_long_readme():
    readme = README.read_text()
    padding = README_MAX_LINES - len(readme.splitlines())
    assert check_readme_length(readme + "more\n" * padding) != []
    assert check_readme_length(readme + "more\n" * (padding - 1)) == []  # 299 lines is still fine


def test_every_docs_page_is_linked_from_the_readme():
    pages = docs_tree()
    assert len(pages) > 1, "no docs/*.md found"
    assert check_every_page_linked(pages) == []


def test_page_link_check_catches_an_unlinked_page():
    pages = docs_tree()
    dropped = dict(pages, **{"README.md": pages["README.md"].replace("(docs/operations.md)", "")})
    assert check_every_page_linked(dropped) == ["README.md does not link docs/operations.md"]
    added = dict(pages, **{"docs/new-page.md": "# New\n"})
    assert check_every_page_linked(added) == ["README.md does not link docs/new-page.md"]


def test_every_relative_link_and_anchor_resolves():
    pages = docs_tree()
    assert sum(len(links(t)) for t in pages.values()) > 20, "the link finder found almost nothing"
    assert check_links(pages) == []


@pytest.mark.parametrize(
    "path, old, new",
    [
        ("README.md", "(docs/ecs.md)", "(docs/ecs-guide.md)"),  # a page that does not exist
        ("docs/rails.md", "(../README.md)", "(README.md)"),  # relative to the wrong directory
        ("docs/rds-iam.md", "(ecs.md#2-create-the-task-role-with-the-policy)", "(ecs.md#2-create-the-task-role)"),
        ("docs/ecs.md", "## 2. Create the task role with the policy", "## 2. Create the task role"),  # heading renamed
        ("docs/rds-iam.md", "[below](#deploying-with-iam-authentication)", "[below](#deploying-with-iam-auth)"),
    ],
)
def test_link_check_catches(path, old, new):
    pages = docs_tree()
    assert old in pages[path]
    assert check_links(dict(pages, **{path: pages[path].replace(old, new, 1)})) != []


def test_slug_is_githubs():
    assert slug("Why `/secrets` exists in the image") == "why-secrets-exists-in-the-image"
    assert slug("`format=env`: values an app reads at boot") == "formatenv-values-an-app-reads-at-boot"
    assert slug("2. Create the task role with the policy") == "2-create-the-task-role-with-the-policy"
    assert slug("File ownership: uid 65532, gid 1000, mode 0440") == "file-ownership-uid-65532-gid-1000-mode-0440"
    assert anchors("# A\n```sh\n# not a heading\n```\n## A\n") == {"a", "a-1"}
