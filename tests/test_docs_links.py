"""README.md and docs/*.md: relative links resolve to files and headings, cited repository paths exist.

A cited path is a word in a code span or a code block that starts with one of :data:`CITED_ROOTS`
(``vlunet/archs/vlunet/vlunet_arch.py``, ``options/train_nhrbl.yml``, ``python scripts/inference.py``, ...).
Placeholders (``options/<file>.yml``) are not checked; ``{a,b}`` alternatives are expanded and ``*``
must match at least one file.
"""
import itertools
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
CITED_ROOTS = ('vlunet/', 'options/', 'scripts/', 'tests/', 'benchmarks/', 'docs/', 'datasets/README.md', '.ci/')
README_MAX_LINES = 250
README_TEST_COMMAND = "pip install -e '.[test]' && python -m pytest -q tests"

# Paths the docs describe that other branches of issue 22 create: the method comparison and the GPU check
# (scripts/), the developer benchmarks moved from scripts/ to benchmarks/, DA-CLIP's and Perceive-IR's option
# files moved into their folders, and the CPU fast-path layer vlunet/ops/. Delete this list once they are merged.
PLANNED: frozenset = frozenset()  # paths the docs may cite before they exist (none now)

FENCE = re.compile(r'^(```|~~~).*?^\1[ \t]*$', re.M | re.S)
CODE_SPAN = re.compile(r'(`+)(.+?)\1', re.S)
LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^#{1,6}[ \t]+(.+?)[ \t#]*$', re.M)
CITED = re.compile(r'(?<![\w./<>{}-])((?:' + '|'.join(re.escape(root) for root in CITED_ROOTS)
                   + r')[\w./{},*<>-]*)')
PLACEHOLDER = re.compile(r'[<>]|\.\.\.')
DOCS_CITATION = re.compile(r'\b(docs/[\w-]+\.md)(?:#([\w-]+))?')


def documentation_pages(root: Path = REPOSITORY) -> List[Path]:
    """README.md and every docs/*.md under ``root``."""
    return [root / 'README.md', *sorted((root / 'docs').glob('*.md'))]


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: the text without markup, lower-cased, punctuation dropped, spaces -> '-'."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)
    text = re.sub(r'[`*]', '', text)
    return re.sub(r'[^\w\- ]', '', text.strip().lower()).replace(' ', '-')


def anchors(page: Path) -> Set[str]:
    """The anchors of a Markdown page's headings (code blocks left out; repeats get -1, -2, ... as on GitHub)."""
    seen: Dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub('', page.read_text(encoding='utf-8'))):
        anchor = heading_anchor(heading)
        result.add(anchor if anchor not in seen else f'{anchor}-{seen[anchor]}')
        seen[anchor] = seen.get(anchor, 0) + 1
    return result


def expand_braces(path: str) -> List[str]:
    """``options/train_{a,b}.yml`` -> both paths (several groups: every combination)."""
    parts = re.split(r'\{([^{}]*)\}', path)
    choices = [[part] if i % 2 == 0 else part.split(',') for i, part in enumerate(parts)]
    return [''.join(combination) for combination in itertools.product(*choices)]


def cited_paths(text: str) -> Iterator[str]:
    """Repository paths cited in the code spans and code blocks of a Markdown text."""
    code = [match.group(0) for match in FENCE.finditer(text)]
    code += [match.group(2) for match in CODE_SPAN.finditer(FENCE.sub('', text))]
    for snippet in code:
        for path in CITED.findall(snippet):
            yield path.rstrip('.,')


def path_exists(root: Path, path: str) -> bool:
    """Whether ``path`` (relative to ``root``; ``*`` allowed) names a file or folder there."""
    if '*' in path:
        return any(root.glob(path.rstrip('/')))
    return (root / path).exists()


def link_problems(page: Path, root: Path = REPOSITORY) -> List[str]:
    """Relative links of ``page`` whose file or #anchor does not exist."""
    problems = []
    for target in LINK.findall(FENCE.sub('', page.read_text(encoding='utf-8'))):
        if re.match(r'[a-z][a-z0-9+.-]*:', target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition('#')
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            problems.append(f'{page.relative_to(root)}: link to {target}: no such file')
        elif anchor and linked.suffix == '.md' and anchor not in anchors(linked):
            problems.append(f'{page.relative_to(root)}: link to {target}: no heading #{anchor} in {linked.name}')
    return problems


def path_problems(page: Path, root: Path = REPOSITORY, planned: frozenset = PLANNED) -> List[str]:
    """Repository paths cited by ``page`` that do not exist under ``root`` and are not ``planned``."""
    problems = []
    for cited in cited_paths(page.read_text(encoding='utf-8')):
        if PLACEHOLDER.search(cited):
            continue
        for path in expand_braces(cited):
            if path not in planned and not path_exists(root, path):
                problems.append(f'{page.relative_to(root)}: cites {path}, which does not exist')
    return problems


def code_citation_problems(root: Path = REPOSITORY) -> List[str]:
    """Citations ``docs/<page>.md#<anchor>`` in package, options, scripts and tests whose page or heading is missing.

    This file is left out: its bad-page test cites pages that do not exist on purpose.
    """
    problems = []
    sources = [path for folder in ('vlunet', 'options', 'scripts', 'benchmarks', 'tests')
               for path in sorted((root / folder).rglob('*'))
               if path.suffix in ('.py', '.yml', '.yaml') and path != Path(__file__).resolve()]
    for source in sources:
        for page, anchor in DOCS_CITATION.findall(source.read_text(encoding='utf-8')):
            target = root / page
            if not target.exists() or (anchor and anchor not in anchors(target)):
                problems.append(f'{source.relative_to(root)}: cites {page}{"#" + anchor if anchor else ""}, '
                                'which does not exist')
    return problems


@pytest.mark.parametrize('page', documentation_pages(), ids=lambda page: page.name)
def test_links_resolve(page):
    assert link_problems(page) == []


@pytest.mark.parametrize('page', documentation_pages(), ids=lambda page: page.name)
def test_cited_paths_exist(page):
    assert path_problems(page) == []


def test_docs_sections_cited_by_code_exist():
    assert code_citation_problems() == []


def test_checker_reports_a_bad_page(tmp_path):
    """A page with a broken link, a broken anchor and wrong cited paths gets one problem for each."""
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'vlunet' / 'archs').mkdir(parents=True)
    (tmp_path / 'vlunet' / 'archs' / 'real_arch.py').write_text('')
    (tmp_path / 'options').mkdir()
    (tmp_path / 'options' / 'train_a.yml').write_text('')
    (tmp_path / 'docs' / 'other.md').write_text('# Other page\n\n## Real `code` heading\n')
    (tmp_path / 'README.md').write_text('\n'.join([
        '# Bad page',
        '[fine](docs/other.md#real-code-heading) [missing file](docs/gone.md) [bad anchor](docs/other.md#nowhere)',
        '[web](https://example.org/x.md) [self](#bad-page)',
        'Good: `vlunet/archs/real_arch.py`, `options/<file>.yml`, `options/train_{a,b}.yml`.',
        'Wrong: `vlunet/archs/renamed_arch.py`.',
        '```bash',
        '# a comment, not a heading',
        'python scripts/missing.py -opt options/train_a.yml',
        '```',
    ]))
    page = tmp_path / 'README.md'
    assert link_problems(page, tmp_path) == [
        'README.md: link to docs/gone.md: no such file',
        'README.md: link to docs/other.md#nowhere: no heading #nowhere in other.md',
    ]
    assert sorted(path_problems(page, tmp_path, planned=frozenset())) == [
        'README.md: cites options/train_b.yml, which does not exist',
        'README.md: cites scripts/missing.py, which does not exist',
        'README.md: cites vlunet/archs/renamed_arch.py, which does not exist',
    ]
    assert 'README.md: cites scripts/missing.py, which does not exist' not in path_problems(
        page, tmp_path, planned=frozenset({'scripts/missing.py'}))
    (tmp_path / 'vlunet' / 'archs' / 'real_arch.py').write_text(
        '"""Decisions: docs/other.md#real-code-heading, docs/other.md#gone, docs/none.md."""\n')
    assert code_citation_problems(tmp_path) == [
        'vlunet/archs/real_arch.py: cites docs/other.md#gone, which does not exist',
        'vlunet/archs/real_arch.py: cites docs/none.md, which does not exist',
    ]


@pytest.mark.parametrize('heading, anchor', [
    ('NAFNet + DA-CLIP', 'nafnet--da-clip'),
    ('Guiding VLU-Net (or any network) with DA-CLIP', 'guiding-vlu-net-or-any-network-with-da-clip'),
    ("Training and testing with the paper's settings", 'training-and-testing-with-the-papers-settings'),
    ('Perceptual metrics: LPIPS and FID', 'perceptual-metrics-lpips-and-fid'),
])
def test_heading_anchor_is_githubs(heading, anchor):
    assert heading_anchor(heading) == anchor


def test_readme_is_short_and_keeps_the_ci_test_command():
    readme = (REPOSITORY / 'README.md').read_text(encoding='utf-8')
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert README_TEST_COMMAND in readme  # .ci/run runs it verbatim
