"""`swift-fipo inspect`: the self-contained HTML page of captured tokens, its input checks, and the page
rendered by a real headless browser (Debian's chromium) into a screenshot that must show coloured tokens."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import need

from swift_fipo import cli
from swift_fipo.viz.inspect import inspect, render

TRICKY = '</script><b onmouseover=alert(1)>x</b> & <!--'


def record(step: int, index: int, weights: list[float], advantage: float = 0.8) -> dict:
    texts = ['The', ' answer', ' is', '\n', TRICKY, ' 4', '<|im_end|>', ' ☃'][:len(weights)]
    return {'step': step, 'index': index, 'advantage': advantage, 'num_tokens': len(weights), 'truncated': False,
            'tokens': [{'id': 10 + position, 'text': text, 'weight': weight, 'future_kl': weight - 1.0,
                        'raw_weight': weight} for position, (text, weight) in enumerate(zip(texts, weights))]}


def records() -> list[dict]:
    first_pass = [record(1, index, [1.0] * 8) for index in range(2)]
    reuse = [record(2, 0, [1.2, 1.2, 1.15, 1.1, 1.05, 1.2, 1.2, 1.0]),
             record(2, 1, [1.0, 0.8, 0.85, 0.9, 0.95, 1.0, 0.8, 0.8], advantage=-0.8)]
    return first_pass + reuse


def write_tokens(directory: Path, rows: list[dict]) -> Path:
    path = directory / 'output' / 'v0-20260101-120000' / 'fipo_tokens.jsonl'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    return path


def embedded(page: str) -> dict:
    match = re.search(r'<script id="fipo-data" type="application/json">(.*?)</script>', page, re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_page_is_self_contained_and_embeds_the_records_safely(tmp_path):
    rows = records()
    write_tokens(tmp_path, rows)
    assert cli.main(['inspect', str(tmp_path)]) == 0
    page = (tmp_path / 'output' / 'v0-20260101-120000' / 'fipo_tokens.html').read_text()
    assert embedded(page)['records'] == rows  # token text survives, "</script>" and all
    assert page.count('</script>') == 2 and TRICKY not in page
    # Nothing to fetch: no URLs, no external resources, and a policy forbidding them anyway.
    assert not re.search(r'https?://|\bsrc=|<link', page)
    assert "default-src 'none'" in page


def test_title_is_escaped():
    page = render(records(), 'FIPO tokens: <run>', 'x')
    assert '<title>FIPO tokens: &lt;run&gt;</title>' in page


@pytest.mark.parametrize('text, message', [
    ('', 'empty; no logging step has been captured yet'),
    ('{"step": "2", "tokens": []}\n', '"step" must be an integer'),
    ('{"step": 2, "tokens": {}}\n', '"tokens" must be a list'),
    ('{"step": 2, "tokens": [{"weight": 1.0}]}\n', 'expected an object with a "text" string'),
    ('{"step": 2, "tokens": [{"text": "a", "weight": "1"}]}\n', '"weight" must be a finite number, got "1"'),
    ('{"step": 2, "tokens": [{"text": "a"}]}\n', '"weight" must be a finite number'),
    ('{"step": 2}\n{oops\n{"step": 3}\n', 'fipo_tokens.jsonl:2: not valid JSON'),
])
def test_malformed_token_files_fail_with_one_clear_line(tmp_path, capsys, text, message):
    path = write_tokens(tmp_path, [])
    path.write_text(text)
    assert cli.main(['inspect', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('swift-fipo inspect: error: ') and message in err and len(err.splitlines()) == 1


def test_missing_capture_names_the_flag(tmp_path, capsys):
    (tmp_path / 'output').mkdir()
    assert cli.main(['inspect', str(tmp_path / 'output')]) == 2
    assert '--fipo_log_tokens N' in capsys.readouterr().err
    assert cli.main(['inspect', str(tmp_path / 'absent')]) == 2
    assert 'no such file or directory' in capsys.readouterr().err


@pytest.mark.parametrize('name', ['fipo_tokens.jsonl', 'logging.jsonl', 'args.json'])
def test_the_page_never_overwrites_a_file_of_the_run(tmp_path, capsys, name):
    path = write_tokens(tmp_path, records())
    victim = path.parent / name
    if not victim.exists():
        victim.write_text('{"keep": true}\n')
    before = victim.read_bytes()
    assert cli.main(['inspect', str(tmp_path), '-o', str(victim)]) == 2
    err = capsys.readouterr().err
    assert "is one of the run's files" in err and str(victim) in err and len(err.splitlines()) == 1
    assert victim.read_bytes() == before
    # An earlier page may be replaced, and a new file written.
    assert cli.main(['inspect', str(tmp_path), '-o', str(path.parent / 'fipo_tokens.html')]) == 0
    assert cli.main(['inspect', str(tmp_path), '-o', str(tmp_path / 'page.html')]) == 0


def test_a_failed_write_names_the_file(tmp_path, capsys):
    write_tokens(tmp_path, records())
    assert cli.main(['inspect', str(tmp_path), '-o', '/dev/full']) == 2
    err = capsys.readouterr().err
    assert err.startswith('swift-fipo inspect: error: /dev/full: cannot write the page') and len(err.splitlines()) == 1


# --- a real browser --------------------------------------------------------------------------------

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason='chromium is not installed (Debian: apt-get install '
                                    'chromium; scripts/test.sh does it when run as root)')


def chromium(tmp_path: Path, url: str, *flags: str) -> subprocess.CompletedProcess:
    # No network, no background services, a throw-away profile: the page alone is tested.
    command = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
               '--disable-component-update', '--disable-sync', '--no-first-run', '--hide-scrollbars',
               f'--user-data-dir={tmp_path / "profile"}', *flags, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def coloured_pixels(png: Path) -> tuple[int, int]:
    """(orange, blue) pixel counts: the page's colours for weights above and below 1."""
    numpy = need('numpy')
    image = need('PIL.Image', 'pillow')
    pixels = numpy.asarray(image.open(png).convert('RGB')).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    orange = (red - blue > 40) & (red > green)
    bluish = (blue - red > 40) & (blue > green - 10)
    return int(orange.sum()), int(bluish.sum())


@needs_chromium
def test_browser_renders_coloured_tokens_and_the_step_selector(tmp_path):
    write_tokens(tmp_path, records())
    page = inspect(tmp_path)
    url = page.resolve().as_uri()

    dom = chromium(tmp_path, url, '--dump-dom')
    assert dom.returncode == 0, dom.stderr[-2000:]
    # Script ran: the first step where FIPO moved a weight is selected, its 16 tokens drawn, coloured.
    assert '<span class="neg">-0.800</span>' in dom.stdout  # only step 2 has a negative advantage
    spans = re.findall(r'<span class="tok[^"]*"[^>]*style="background: ([^;"]+)', dom.stdout)
    assert len(spans) == 16, dom.stdout[-3000:]
    assert sum('rgba(230, 85, 13' in colour for colour in spans) >= 6  # amplified tokens
    assert sum('rgba(49, 130, 189' in colour for colour in spans) >= 4  # attenuated tokens
    assert '&lt;/script&gt;&lt;b onmouseover' in dom.stdout  # shown as text, not parsed as markup

    shots = {}
    for step in (1, 2):
        shot = tmp_path / f'step{step}.png'
        result = chromium(tmp_path, f'{url}#step={step}', f'--screenshot={shot}', '--window-size=1000,600')
        assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
        shots[step] = coloured_pixels(shot)
    # Step 1 (every weight 1) shows only the legend's colours; step 2 adds coloured tokens of both kinds.
    assert shots[2][0] > shots[1][0] + 1500 and shots[2][1] > shots[1][1] + 500, shots
