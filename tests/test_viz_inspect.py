"""`swift-fipo inspect`: the self-contained HTML page of captured tokens, its input checks, and the page
rendered by a real headless browser (Debian's chromium) into a screenshot that must show coloured tokens."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
import unicodedata
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
                        'raw_weight': weight}
                       for position, (text, weight) in enumerate(zip(texts, weights, strict=True))]}


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


# --- bidi controls and other format characters ----------------------------------------------------

RLO, LRI, ZWJ, TAG = '\u202e', '\u2066', '\u200d', '\U000e0001'  # all Unicode category Cf
BIDI_TEXTS = ['A', 'B', f'{RLO}C', 'D', 'E', f'F{LRI}', 'G', 'H', f'I{ZWJ}{TAG}', 'J']


def bidi_records() -> list[dict]:
    # Step 2 only: one line of ten tokens, the third opening a right-to-left override it never closes.
    return [{'step': 2, 'index': 0, 'advantage': 0.5, 'num_tokens': len(BIDI_TEXTS), 'truncated': False,
             'tokens': [{'id': position, 'text': text, 'weight': 1.1, 'future_kl': 0.1, 'raw_weight': 1.1}
                        for position, text in enumerate(BIDI_TEXTS)]}]


def outside_the_data(page: str) -> str:
    return re.sub(r'<script id="fipo-data" type="application/json">.*?</script>', '', page, flags=re.S)


def test_format_characters_stay_in_the_data_and_never_reach_the_markup(tmp_path):
    """The records embedded are the input, format characters and all; the rest of the page (title, heading,
    template) holds none: a directory named with U+202E shows it as [U+202E], in the browser's tab too."""
    run = tmp_path / f'run{RLO}evil'
    rows = bidi_records()
    write_tokens(run, rows)
    assert cli.main(['inspect', str(run)]) == 0
    page = (run / 'output' / 'v0-20260101-120000' / 'fipo_tokens.html').read_text()
    assert embedded(page)['records'] == rows
    assert embedded(page)['source'].count(RLO) == 1  # the source name too: the script shows it visibly
    rest = outside_the_data(page)
    assert [character for character in rest if unicodedata.category(character) == 'Cf'] == []
    assert '<title>FIPO tokens: run[U+202E]evil</title>' in rest
    # Each token, the details line and the source name are their own bidi isolates.
    for selector in ('.tok', '#details', '.source'):
        rule = re.search(re.escape(selector) + r' \{([^}]*)\}', rest)
        assert rule is not None and 'unicode-bidi: isolate' in rule.group(1), selector


BIDI_PROBE = """
<script>
// Test probe, run after the page's own script: where each token was laid out, what it shows, and what
// the details line says on hovering the override token.
const tokens = [...document.querySelectorAll('.tok')];
tokens[2].dispatchEvent(new MouseEvent('mouseenter'));
const probe = document.createElement('pre');
probe.id = 'probe';
probe.textContent = JSON.stringify({
  lefts: tokens.map(t => t.getBoundingClientRect().left),
  tops: tokens.map(t => t.getBoundingClientRect().top),
  shown: tokens.map(t => t.textContent),
  marks: tokens.map(t => [...t.querySelectorAll('.cf')].map(m => m.textContent)),
  details: document.getElementById('details').textContent,
  title: tokens[2].title,
  source: document.getElementById('source').textContent,
  isolated: [tokens[0], document.getElementById('details'), document.getElementById('source')]
    .map(e => getComputedStyle(e).unicodeBidi),
});
document.body.append(probe);
</script>
"""


def probed(tmp_path: Path, page: Path, probe: str, fragment: str = '') -> dict:
    """The JSON a probe script appended to a copy of the page wrote into the DOM, read with --dump-dom."""
    copy = page.with_name('probed.html')
    copy.write_text(page.read_text().replace('</body>', probe + '</body>'))
    dom = chromium(tmp_path, copy.resolve().as_uri() + fragment, '--dump-dom', '--window-size=1400,800')
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert match is not None, dom.stdout[-3000:]
    return json.loads(html.unescape(match.group(1)))


@needs_chromium
def test_browser_a_bidi_control_in_a_token_reorders_nothing_after_it(tmp_path):
    run = tmp_path / f'run{RLO}x'
    write_tokens(run, bidi_records())
    result = probed(tmp_path, inspect(run), BIDI_PROBE)
    assert len(set(result['tops'])) == 1, result  # one line, so left to right is reading order
    lefts = result['lefts']
    assert lefts == sorted(lefts) and len(set(lefts)) == len(lefts), f'tokens out of order: {lefts}'
    # Every format character shows as a mark of its own; the token's other text stays as it was.
    assert result['marks'][2] == ['RLO'] and result['marks'][5] == ['LRI']
    assert result['marks'][8] == ['ZWJ', 'U+E0001']
    assert result['shown'][2] == 'RLOC' and result['shown'][0] == 'A'
    for text in (*result['shown'], result['details'], result['title'], result['source']):
        assert not any(unicodedata.category(c) == 'Cf' for c in text.replace('\u2068', '').replace('\u2069', '')), text
    # The details line and the tooltip: the text as an escaped literal, isolated, and the field naming it.
    for info in (result['details'], result['title']):
        assert 'token \u2068"\\u202eC"\u2069  id 2' in info and 'format characters: U+202E RLO' in info, info
    assert '[U+202E RLO]' in result['source']
    assert result['isolated'] == ['isolate'] * 3


MODE_PROBE = """
<script>
// Test probe: each token's colour in the mode the page opened with, then after choosing the other one.
const mode = document.getElementById('mode');
const seen = () => ({mode: mode.value, low: document.getElementById('low').textContent,
                     high: document.getElementById('high').textContent,
                     colours: [...document.querySelectorAll('.tok')].map(t => t.style.background)});
const first = seen();
mode.value = mode.value === 'weight' ? 'future_kl' : 'weight';
mode.dispatchEvent(new Event('change'));
const probe = document.createElement('pre');
probe.id = 'probe';
probe.textContent = JSON.stringify([first, seen()]);
document.body.append(probe);
</script>
"""
ORANGE, BLUE = 'rgba(230, 85, 13', 'rgba(49, 130, 189'


@needs_chromium
@pytest.mark.parametrize('fragment', ['', '#mode=future_kl'])
def test_browser_colours_tokens_by_the_field_the_page_selects(tmp_path, fragment):
    """Weight and Future-KL disagree on every token here (above 1 with a negative Future-KL and the
    reverse): the colours follow whichever field the address or the selector chose, on its own scale."""
    weights, future_kls = [1.2, 1.1, 0.9, 0.8], [-0.4, -0.2, 0.2, 0.4]
    rows = [{'step': 2, 'index': 0, 'advantage': 0.5, 'num_tokens': 4, 'truncated': False,
             'tokens': [{'id': position, 'text': f't{position}', 'weight': weight, 'future_kl': future_kl,
                         'raw_weight': weight}
                        for position, (weight, future_kl) in enumerate(zip(weights, future_kls, strict=False))]}]
    write_tokens(tmp_path, rows)
    views = probed(tmp_path, inspect(tmp_path), MODE_PROBE, fragment)
    assert [view['mode'] for view in views] == (['future_kl', 'weight'] if fragment else ['weight', 'future_kl'])
    for view in views:
        field = weights if view['mode'] == 'weight' else future_kls
        centre = 1.0 if view['mode'] == 'weight' else 0.0
        expected = ['orange' if value > centre else 'blue' for value in field]
        shown = ['orange' if colour.startswith(ORANGE) else 'blue' if colour.startswith(BLUE) else colour
                 for colour in view['colours']]
        assert shown == expected, view
        # The 95th-percentile distance from the centre: 0.2 for the weights, 0.4 for the Future-KL.
        span = 0.2 if view['mode'] == 'weight' else 0.4
        assert (float(view['low']), float(view['high'])) == pytest.approx((centre - span, centre + span)), view


# --- the page's script without a browser: node with a minimal DOM ----------------------------------

NODE = shutil.which('node')
needs_node = pytest.mark.skipif(NODE is None, reason='node is not installed')
# Just what the page's script uses; `dump()` reports every token span and the header fields.
MINIMAL_DOM = r"""
class Element {
  constructor(tag) { this.tag = tag; this.children = []; this.style = {}; this.className = ''; this.title = '';
                     this.listeners = {}; this.value = ''; }
  append(...nodes) { for (const n of nodes) this.children.push(typeof n === 'string' ? new Text(n) : n); }
  replaceChildren() { this.children = []; }
  addEventListener(type, listener) { (this.listeners[type] ||= []).push(listener); }
  dispatch(type) { for (const listener of this.listeners[type] || []) listener(); }
  get textContent() { return this.children.map(c => c.textContent).join(''); }
  set textContent(text) { this.children = [new Text(String(text))]; }
}
class Text { constructor(text) { this.textContent = text; } }
class Option extends Element {
  constructor(text, value) { super('option'); this.textContent = text; this.value = value; }
}
const byId = {};
const document = {
  getElementById: id => byId[id] ||= new Element(id),
  createElement: tag => new Element(tag),
};
const location = {hash: HASH};
byId['fipo-data'] = new Element('script');
byId['fipo-data'].textContent = DATA;
byId['mode'] = new Element('select');
byId['mode'].value = 'weight';
function spans(element) {
  return element.children.flatMap(c => !(c instanceof Element) ? [] : c.className.startsWith('tok') ? [c] : spans(c));
}
function dump() {
  return spans(byId['completions']).map(t => ({
    parts: t.children.map(c => c instanceof Element ? {mark: c.textContent, className: c.className} : c.textContent),
    background: t.style.background, title: t.title,
    details: (t.dispatch('mouseenter'), byId['details'].textContent)}));
}
"""


def run_page_script(page: str, hash_: str = '', then: str = '', extra: str = '') -> dict:
    """Run the page's own script under MINIMAL_DOM; returns what it drew (and, after ``then``, again), plus
    the fields of the JavaScript object literal body ``extra``."""
    script = re.findall(r'<script>(.*?)</script>', page, re.S)[-1]
    data = re.search(r'<script id="fipo-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    program = (MINIMAL_DOM.replace('HASH', json.dumps(hash_)).replace('DATA', json.dumps(data)) + script
               + f'\nconst before = dump();\nconst more = {{{extra}}};\n{then}\n'
               'console.log(JSON.stringify({before, after: dump(), source: byId.source.textContent, ...more}));\n')
    result = subprocess.run([NODE, '-e', program], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@needs_node
def test_script_shows_format_characters_as_marks_and_keeps_the_rest():
    page = render(bidi_records(), 'FIPO tokens: x', f'/runs/a{RLO}b/fipo_tokens.jsonl')
    drawn = run_page_script(page)
    tokens = drawn['before']
    assert [token['parts'] for token in tokens[:4]] == [
        ['A'], ['B'], [{'mark': 'RLO', 'className': 'cf'}, 'C'], ['D']]
    assert tokens[8]['parts'] == ['I', {'mark': 'ZWJ', 'className': 'cf'}, {'mark': 'U+E0001', 'className': 'cf'}]
    assert drawn['source'] == '/runs/a[U+202E RLO]b/fipo_tokens.jsonl'
    details = tokens[2]['details']
    assert details == tokens[2]['title']
    assert details.splitlines()[0] == 'token \u2068"\\u202eC"\u2069  id 2  position 3/10'
    assert details.splitlines()[-1] == 'format characters: U+202E RLO'
    assert tokens[8]['details'].splitlines()[0].startswith('token \u2068"I\\u200d\\u{e0001}"\u2069')
    assert 'format characters: U+200D ZWJ, U+E0001 U+E0001' in tokens[8]['details']
    assert 'format characters' not in tokens[0]['details']


@needs_node
@pytest.mark.parametrize('hash_, first', [('', 'weight'), ('#mode=future_kl', 'future_kl')])
def test_script_colours_by_the_selected_field(hash_, first):
    weights, future_kls = [1.2, 1.1, 0.9, 0.8], [-0.4, -0.2, 0.2, 0.4]
    rows = [{'step': 2, 'index': 0, 'advantage': 0.5, 'num_tokens': 4, 'truncated': False,
             'tokens': [{'id': position, 'text': f't{position}', 'weight': weight, 'future_kl': future_kl}
                        for position, (weight, future_kl) in enumerate(zip(weights, future_kls, strict=False))]}]
    other = 'future_kl' if first == 'weight' else 'weight'
    drawn = run_page_script(render(rows, 't', 's'), hash_,
                            then=f"byId.mode.value = '{other}'; byId.mode.dispatch('change');")
    for view, mode in ((drawn['before'], first), (drawn['after'], other)):
        field, centre = (weights, 1.0) if mode == 'weight' else (future_kls, 0.0)
        orange = [token['background'].startswith('rgba(230,85,13') for token in view]
        assert orange == [value > centre for value in field], (mode, view)


@pytest.mark.parametrize('field', ['step', 'index', 'num_tokens'])
def test_integers_are_accepted_up_to_what_the_page_holds_exactly(tmp_path, capsys, field):
    """2**53 is the largest integer the page's JavaScript holds exactly: it is shown as it is; one more is
    refused with one line naming the field (it would be shown as another number)."""
    largest = record(1, 0, [1.0, 1.1])
    largest[field] = 2**53
    write_tokens(tmp_path, [largest])
    assert cli.main(['inspect', str(tmp_path), '-o', str(tmp_path / 'page.html')]) == 0
    assert embedded((tmp_path / 'page.html').read_text())['records'][0][field] == 2**53
    beyond = dict(largest, **{field: -(2**53 + 1)})
    write_tokens(tmp_path, [beyond])
    capsys.readouterr()
    assert cli.main(['inspect', str(tmp_path), '-o', str(tmp_path / 'page.html')]) == 2
    err = capsys.readouterr().err
    assert f'"{field}" must be an integer, got an integer of 54 bits' in err and len(err.splitlines()) == 1


# --- what the page tells a user: the labels of the values, the colour scale -----------------------------

def page_view(rows: list[dict], hash_: str = '') -> dict:
    """What the page's own script drew (under node): the token spans, the scale's ends and the step list."""
    return run_page_script(render(rows, 't', 's'), hash_, then='', extra='scale: [byId.low.textContent, '
                           'byId.high.textContent], steps: byId.step.children.map(option => option.textContent)')


@needs_node
def test_hover_details_name_each_value_for_what_it_is():
    """The clipped weight the loss applied, the raw exp(Future-KL) and the Future-KL differ here on every
    token (a clip bound and the safety rule acted): each number must stand beside its own name."""
    tokens = [{'id': 1, 'text': 'a', 'weight': 1.2, 'raw_weight': 1.5, 'future_kl': 0.405465},
              {'id': 2, 'text': 'b', 'weight': 0.8, 'raw_weight': 1.3, 'future_kl': 0.262364, 'safety': True},
              {'id': 3, 'text': 'c', 'weight': 1.0, 'raw_weight': 0.9, 'future_kl': -0.105361}]
    rows = [{'step': 2, 'index': 0, 'advantage': -0.75, 'num_tokens': 3, 'truncated': False, 'tokens': tokens}]
    drawn = page_view(rows)['before']
    for token, shown in zip(tokens, drawn, strict=False):
        lines = shown['details'].splitlines()
        assert shown['details'] == shown['title']
        assert lines[1] == (f'influence weight (applied, clipped) {token["weight"]:.4f}   '
                            f'exp(Future-KL) (raw, before clipping) {token["raw_weight"]:.4f}')
        assert lines[2] == f'Future-KL {token["future_kl"]:.4f}   advantage (completion) -0.7500'
    assert drawn[1]['details'].splitlines()[-1] == 'safety rule fired'


def documented_span(values: list[float], centre: float, weights: list[float]) -> float:
    """docs/visualize.md: one scale per file, the 95th percentile of the tokens' non-zero distances from the
    centre, dropped responses (weight 0) left out: the sorted distances' element at floor(0.95 n)."""
    distances = sorted(abs(value - centre) for value, weight in zip(values, weights, strict=False)
                       if weight != 0 and value != centre)
    return distances[min(len(distances) - 1, int(0.95 * len(distances)))]


def alpha(background: str) -> float:
    return float(re.fullmatch(r'rgba\(\d+,\d+,\d+,([\d.]+)\)', background).group(1))


@needs_node
@pytest.mark.parametrize('mode', ['weight', 'future_kl'])
def test_the_colour_scale_is_the_documented_percentile_not_the_largest_value(mode):
    """Step 1 holds one far outlier (and a dropped response, whose distance would be 1): the scale is the 95th
    percentile of the whole file's distances, the same on step 2, where the outlier is not even shown."""
    first = [1.0 + 0.01 * k for k in range(1, 21)] + [6.0, 1.0]
    second = [1.05, 0.9, 0.97, 1.0]
    rows = [{'step': 1, 'index': 0, 'advantage': 0.5, 'num_tokens': len(first), 'truncated': False,
             'tokens': [{'id': k, 'text': f't{k}', 'weight': w, 'future_kl': math.log(w), 'raw_weight': w}
                        for k, w in enumerate(first)]},
            {'step': 1, 'index': 1, 'advantage': -0.5, 'num_tokens': 2, 'truncated': False,
             'tokens': [{'id': 0, 'text': 'x', 'weight': 0.0, 'future_kl': -3.0, 'raw_weight': 0.05}] * 2},
            {'step': 2, 'index': 0, 'advantage': 0.5, 'num_tokens': len(second), 'truncated': False,
             'tokens': [{'id': k, 'text': f's{k}', 'weight': w, 'future_kl': math.log(w), 'raw_weight': w}
                        for k, w in enumerate(second)]}]
    tokens = [token for row in rows for token in row['tokens']]
    centre = 1.0 if mode == 'weight' else 0.0
    span = documented_span([token[mode] for token in tokens], centre, [token['weight'] for token in tokens])
    largest = max(abs(token[mode] - centre) for token in tokens if token['weight'] != 0)
    assert span < largest / 5  # the rule and the single largest value give different scales here
    for step in (1, 2):
        view = page_view(rows, f'#step={step}&mode={mode}')
        assert view['scale'] == [f'{centre - span:.3f}', f'{centre + span:.3f}'], (step, view['scale'])
        shown = [token for row in rows if row['step'] == step for token in row['tokens']]
        for token, drawn in zip(shown, view['before'], strict=False):
            distance = abs(token[mode] - centre)
            if token['weight'] == 0:
                assert drawn['background'] == '#e5e5e5'  # dropped: grey whatever its value
            elif distance == 0:
                assert drawn['background'] == '#fff'
            else:  # 0.12 at the centre's edge to 0.9 at the scale's end and beyond
                assert alpha(drawn['background']) == pytest.approx(0.12 + 0.78 * min(1.0, distance / span), abs=1e-3)


# --- a run resumed into the same output directory ---------------------------------------------------------

def captured(step: int, index: int, word: str) -> dict:
    return {'step': step, 'index': index, 'advantage': 0.5, 'num_tokens': 1, 'truncated': False,
            'tokens': [{'id': 1, 'text': word, 'weight': 1.1, 'future_kl': 0.09531, 'raw_weight': 1.1}]}


@pytest.mark.parametrize('first_run, resumed', [
    # --fipo_log_tokens 1, steps 1-4, resumed from checkpoint-2: steps 3 and 4 appended again.
    ([captured(step, 0, 'first') for step in range(1, 5)], [captured(step, 0, 'again') for step in (3, 4)]),
    # --fipo_log_tokens 2, killed during step 3 after its first completion was captured, resumed from
    # checkpoint-2: step 3 starts again at completion 0, the same step as the last record.
    ([captured(step, index, 'first') for step in (1, 2) for index in (0, 1)] + [captured(3, 0, 'first')],
     [captured(step, index, 'again') for step in (3, 4) for index in (0, 1)]),
    # The same with both completions of step 3 captured before the kill.
    ([captured(step, index, 'first') for step in (1, 2, 3) for index in (0, 1)],
     [captured(step, index, 'again') for step in (3, 4) for index in (0, 1)]),
])
def test_a_resumed_runs_records_supersede_the_earlier_ones(tmp_path, first_run, resumed):
    write_tokens(tmp_path, first_run + resumed)
    restart = resumed[0]['step']
    expected = [row for row in first_run if row['step'] < restart] + resumed
    page = (inspect(tmp_path, tmp_path / 'page.html')).read_text()
    assert embedded(page)['records'] == expected
    if NODE is not None:  # the step list counts each step's completions once
        per_step = {row['step']: sum(other['step'] == row['step'] for other in expected) for row in expected}
        steps = page_view(expected)['steps']
        assert [step.split('  (')[1].split(',')[0] for step in steps] == [
            f'{count} completion{"s" if count > 1 else ""}' for count in per_step.values()]


def test_records_without_an_index_restart_only_at_an_earlier_step(tmp_path):
    rows = [{key: value for key, value in captured(step, 0, word).items() if key != 'index'}
            for step, word in ((1, 'a'), (1, 'b'), (2, 'c'), (2, 'd'), (2, 'e'), (1, 'f'), (2, 'g'))]
    write_tokens(tmp_path, rows)
    records = embedded(inspect(tmp_path).read_text())['records']
    assert [record['tokens'][0]['text'] for record in records] == ['f', 'g']


@pytest.mark.ms_swift
@pytest.mark.cli
def test_a_real_run_resumed_into_its_output_directory_shows_each_step_once(tiny_run_dir, tmp_path):
    """The real `swift rlhf`: 4 steps saving checkpoint-2, then resumed from it into the same directory
    (--add_version false). ms-swift appends steps 3-4 again to logging.jsonl and the plugin to
    fipo_tokens.jsonl; plot and inspect show steps 1-2 of the first run and 3-4 of the resumed one."""
    need('swift', 'ms-swift')
    from test_cli_swift import TRAIN_SCRIPT, _tail, run_tiny

    from swift_fipo.viz import plot as viz_plot
    flags = ('--fipo_log_tokens', '1', '--add_version', 'false', '--save_strategy', 'steps', '--save_steps', '2')
    work = tmp_path / 'run'
    first, _ = run_tiny(tiny_run_dir, work, *flags)
    assert first.returncode == 0, _tail(first)
    output = work / 'output'
    tokens_file, logging_file = output / 'fipo_tokens.jsonl', output / 'logging.jsonl'
    first_tokens, first_logs = tokens_file.read_text(), logging_file.read_text()
    # The same command again, resumed (run_tiny's environment: this Python's bin first, the plugin on).
    env = {key: value for key, value in os.environ.items() if key != 'SWIFT_FIPO_DISABLE'}
    env['PATH'] = f'{Path(sys.executable).parent}{os.pathsep}{env.get("PATH", "")}'
    resumed = subprocess.run(['bash', str(TRAIN_SCRIPT), str(work), *flags, '--resume_from_checkpoint',
                              str(output / 'checkpoint-2')], capture_output=True, text=True, cwd=work, env=env,
                             timeout=600, check=False)
    assert resumed.returncode == 0, _tail(resumed)
    assert tokens_file.read_text().startswith(first_tokens) and logging_file.read_text().startswith(first_logs)
    before = [json.loads(line) for line in first_tokens.splitlines()]
    appended = [json.loads(line) for line in tokens_file.read_text()[len(first_tokens):].splitlines()]
    shape = [(row['step'], row['index']) for row in before + appended]
    assert shape == [(1, 0), (2, 0), (3, 0), (4, 0), (3, 0), (4, 0)]  # the file as the two runs leave it

    assert cli.main(['inspect', str(output), '-o', str(tmp_path / 'page.html')]) == 0
    assert embedded((tmp_path / 'page.html').read_text())['records'] == before[:2] + appended

    def future_kl(text: str) -> dict[int, float]:
        rows = [json.loads(line) for line in text.splitlines()]
        return {int(row['global_step/max_steps'].split('/')[0]): row['fipo/future_kl_mean'] for row in rows
                if 'fipo/future_kl_mean' in row}
    expected = {**{step: value for step, value in future_kl(first_logs).items() if step < 3},
                **future_kl(logging_file.read_text()[len(first_logs):])}
    steps, values = viz_plot.load_run(output).series['fipo/future_kl_mean']
    assert dict(zip(steps, values, strict=False)) == pytest.approx(expected) and steps == [1, 2, 3, 4]
