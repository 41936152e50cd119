/**
 * Logs webview: the log lines of one invocation (a past one, or the running one as they arrive).
 * Filters by level and stream, highlights a search, follows the tail unless the user scrolled up,
 * and keeps lines + UI state across reloads of the webview (getState/setState).
 */
import './logs.css';
import { connect } from '../shared/api';
import { clear, fmtClock, h } from '../shared/dom';
import {
  InvocationSummary,
  LOG_LEVELS,
  LOG_STREAMS,
  LogFilter,
  LogLevel,
  LogLine,
  LogStream,
} from '../shared/messages';

/** Lines kept in memory (oldest dropped first) and in the persisted state. */
const MAX_LINES = 20000;
const MAX_PERSISTED = 2000;

interface State {
  invocation?: InvocationSummary;
  lines: LogLine[];
  filter: LogFilter;
  following: boolean;
  scrollTop: number;
}

const vs = connect<'logs', State>('logs');
const saved = vs.getState();
const st: State = {
  invocation: saved?.invocation,
  lines: saved?.lines ?? [],
  filter: saved?.filter ?? { levels: [...LOG_LEVELS], streams: [...LOG_STREAMS], search: '' },
  following: saved?.following ?? true,
  scrollTop: saved?.scrollTop ?? 0,
};
const seqs = new Set(st.lines.map((l) => l.seq));
let pendingReveal: number | undefined;
let currentMatch = -1;

// ---------------------------------------------------------------- layout

const titleEl = h('span', { class: 'title' });
const stateEl = h('span', { class: 'badge' });
const idEl = h('span', { class: 'dim mono id' });
const levelButtons = new Map<LogLevel, HTMLButtonElement>();
const streamButtons = new Map<LogStream, HTMLButtonElement>();
const search = h('input', { type: 'search', placeholder: 'Search (Enter: next match)', 'aria-label': 'Search logs', class: 'search' });
const matchCount = h('span', { class: 'dim match-count' });
const list = h('div', { class: 'lines', role: 'log', 'aria-live': 'off', tabindex: 0 });
const emptyEl = h('div', { class: 'empty' });
const jump = h('button', { class: 'primary jump', title: 'Scroll to the newest line and follow the tail' }, 'Jump to latest ↓');

function toggle(label: string, cls: string, on: boolean, onClick: () => void): HTMLButtonElement {
  const b = h('button', { class: `toggle ${cls}`, 'aria-pressed': String(on), title: `Show ${label} lines` }, h('span', { class: 'label' }, label), h('span', { class: 'count' }));
  b.addEventListener('click', onClick);
  return b;
}
for (const l of LOG_LEVELS) levelButtons.set(l, toggle(l, `level-${l}`, st.filter.levels.includes(l), () => flip('levels', l)));
for (const s of LOG_STREAMS) streamButtons.set(s, toggle(s, `stream-${s}`, st.filter.streams.includes(s), () => flip('streams', s)));
search.value = st.filter.search;

const app = document.getElementById('app')!;
app.append(
  h('div', { class: 'toolbar header' }, titleEl, stateEl, idEl),
  h(
    'div',
    { class: 'toolbar filters' },
    h('span', { class: 'group', role: 'group', 'aria-label': 'Levels' }, h('span', { class: 'dim' }, 'Level'), ...levelButtons.values()),
    h('span', { class: 'group', role: 'group', 'aria-label': 'Streams' }, h('span', { class: 'dim' }, 'Stream'), ...streamButtons.values()),
    h('span', { class: 'spacer' }),
    search,
    matchCount,
  ),
  h('div', { class: 'body' }, list, emptyEl, jump),
);

// ---------------------------------------------------------------- filtering and rendering

function flip<K extends 'levels' | 'streams'>(key: K, v: LogFilter[K][number]): void {
  const arr = st.filter[key] as string[];
  const i = arr.indexOf(v);
  if (i >= 0) arr.splice(i, 1);
  else arr.push(v);
  renderAll();
  postFilter();
}

function postFilter(): void {
  vs.post({ type: 'filter', invocationId: st.invocation?.id, filter: { ...st.filter } });
  persist();
}

/** Lines without a level (stdout, stderr) pass the level filter; the stream filter applies to all. */
function visible(l: LogLine): boolean {
  return st.filter.streams.includes(l.stream) && (!l.level || st.filter.levels.includes(l.level));
}

function fieldsText(f: LogLine['fields']): string {
  if (!f) return '';
  return Object.entries(f)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join('  ');
}

/** Append `text` to `el`, wrapping case-insensitive matches of `q` in <mark>. Returns the match count. */
function highlighted(el: HTMLElement, text: string, q: string): number {
  if (!q) {
    el.textContent = text;
    return 0;
  }
  const lower = text.toLowerCase();
  const ql = q.toLowerCase();
  let i = 0;
  let n = 0;
  for (let j = lower.indexOf(ql); j >= 0; j = lower.indexOf(ql, j + ql.length)) {
    if (j > i) el.append(text.slice(i, j));
    el.append(h('mark', {}, text.slice(j, j + q.length)));
    i = j + q.length;
    n++;
  }
  if (i < text.length) el.append(text.slice(i));
  return n;
}

function tagOf(l: LogLine): { label: string; cls: string } {
  if (l.stream === 'log') return { label: l.level ?? 'log', cls: `level-${l.level ?? 'info'}` };
  return { label: l.stream, cls: `stream-${l.stream}${l.level === 'error' || l.level === 'warn' ? ` level-${l.level}` : ''}` };
}

function row(l: LogLine): HTMLElement {
  const tag = tagOf(l);
  const text = h('span', { class: 'text' });
  let matches = highlighted(text, l.text, st.filter.search);
  const ft = fieldsText(l.fields);
  let fields: HTMLElement | undefined;
  if (ft) {
    fields = h('span', { class: 'fields' });
    matches += highlighted(fields, ft, st.filter.search);
  }
  const r = h(
    'div',
    { class: `line ${tag.cls}${matches ? ' match' : ''}`, 'data-seq': l.seq, title: `seq ${l.seq} · ${new Date(l.t).toISOString()}` },
    h('span', { class: 'time' }, fmtClock(l.t)),
    h('span', { class: `tag ${tag.cls}` }, tag.label),
    h('span', { class: 'msg' }, text, fields),
  );
  return r;
}

function renderHeader(): void {
  const inv = st.invocation;
  titleEl.textContent = inv ? `Logs: ${inv.agent}` : 'Logs';
  idEl.textContent = inv ? inv.id : '';
  stateEl.textContent = inv?.state ?? '';
  stateEl.className = `badge state-${inv?.state ?? 'none'}`;
  stateEl.hidden = !inv;
}

function renderCounts(): void {
  const lv = new Map<string, number>();
  const sv = new Map<string, number>();
  for (const l of st.lines) {
    if (l.level) lv.set(l.level, (lv.get(l.level) ?? 0) + 1);
    sv.set(l.stream, (sv.get(l.stream) ?? 0) + 1);
  }
  for (const [k, b] of levelButtons) setToggle(b, st.filter.levels.includes(k), lv.get(k) ?? 0);
  for (const [k, b] of streamButtons) setToggle(b, st.filter.streams.includes(k), sv.get(k) ?? 0);
}

function setToggle(b: HTMLButtonElement, on: boolean, count: number): void {
  b.setAttribute('aria-pressed', String(on));
  b.querySelector('.count')!.textContent = String(count);
}

function renderEmpty(): void {
  const shown = list.childElementCount;
  emptyEl.hidden = shown > 0;
  list.hidden = shown === 0;
  emptyEl.textContent = st.lines.length === 0 ? (st.invocation ? 'No log lines yet.' : 'No invocation selected. Run an agent or open one from the history.') : 'No lines match the level and stream filters.';
}

function renderMatches(): void {
  const n = list.querySelectorAll('mark').length;
  matchCount.textContent = st.filter.search ? `${n} match${n === 1 ? '' : 'es'}` : '';
}

function renderAll(): void {
  clear(list);
  currentMatch = -1;
  const frag = document.createDocumentFragment();
  for (const l of st.lines) if (visible(l)) frag.appendChild(row(l));
  list.appendChild(frag);
  renderCounts();
  renderEmpty();
  renderMatches();
  if (st.following) scrollToEnd();
}

/** Keep lines ordered by seq; a line that arrives out of order is inserted at its place. */
function addLine(l: LogLine): void {
  if (seqs.has(l.seq)) return;
  seqs.add(l.seq);
  const last = st.lines[st.lines.length - 1];
  let idx = st.lines.length;
  if (last && l.seq < last.seq) idx = st.lines.findIndex((x) => x.seq > l.seq);
  st.lines.splice(idx, 0, l);
  if (st.lines.length > MAX_LINES) {
    const dropped = st.lines.splice(0, st.lines.length - MAX_LINES);
    for (const d of dropped) {
      seqs.delete(d.seq);
      list.querySelector(`[data-seq="${d.seq}"]`)?.remove();
    }
  }
  if (visible(l)) {
    const r = row(l);
    const before = idx < st.lines.length - 1 ? nextVisibleRow(idx + 1) : null;
    list.insertBefore(r, before);
  }
  renderCounts();
  renderEmpty();
  if (st.filter.search) renderMatches();
  if (st.following) scrollToEnd();
  else jump.hidden = false;
  persistSoon();
}

function nextVisibleRow(from: number): Element | null {
  for (let i = from; i < st.lines.length; i++) {
    const el = list.querySelector(`[data-seq="${st.lines[i]!.seq}"]`);
    if (el) return el;
  }
  return null;
}

// ---------------------------------------------------------------- scrolling

let programmatic = false;
function scrollToEnd(): void {
  programmatic = true;
  list.scrollTop = list.scrollHeight;
  st.following = true;
  jump.hidden = true;
}

list.addEventListener('scroll', () => {
  const atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  if (programmatic) {
    programmatic = false;
  } else {
    st.following = atEnd;
  }
  jump.hidden = st.following || atEnd;
  st.scrollTop = list.scrollTop;
  persistSoon();
});
jump.addEventListener('click', () => {
  scrollToEnd();
  persist();
});

function reveal(seq: number): void {
  const target = st.lines.find((l) => l.seq >= seq && visible(l)) ?? [...st.lines].reverse().find(visible);
  if (!target) return;
  const el = list.querySelector<HTMLElement>(`[data-seq="${target.seq}"]`);
  if (!el) return;
  st.following = false;
  programmatic = true;
  el.scrollIntoView({ block: 'center' });
  list.querySelectorAll('.revealed').forEach((x) => x.classList.remove('revealed'));
  el.classList.add('revealed');
  jump.hidden = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  persist();
}

// ---------------------------------------------------------------- search

let searchTimer: ReturnType<typeof setTimeout> | undefined;
search.addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    st.filter.search = search.value;
    renderAll();
    postFilter();
  }, 120);
});
search.addEventListener('keydown', (e) => {
  if (e.key !== 'Enter') return;
  const marks = [...list.querySelectorAll('mark')];
  if (!marks.length) return;
  currentMatch = (currentMatch + (e.shiftKey ? -1 : 1) + marks.length) % marks.length;
  marks.forEach((m, i) => m.classList.toggle('current', i === currentMatch));
  st.following = false;
  marks[currentMatch]!.scrollIntoView({ block: 'center' });
});
window.addEventListener('keydown', (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === 'f') {
    e.preventDefault();
    search.focus();
    search.select();
  }
});

// ---------------------------------------------------------------- state

function persist(): void {
  vs.setState({ ...st, lines: st.lines.slice(-MAX_PERSISTED) });
}
let persistTimer: ReturnType<typeof setTimeout> | undefined;
function persistSoon(): void {
  if (persistTimer) return;
  persistTimer = setTimeout(() => {
    persistTimer = undefined;
    persist();
  }, 300);
}

// ---------------------------------------------------------------- messages

vs.onMessage((msg) => {
  switch (msg.type) {
    case 'init': {
      const same = st.invocation?.id === msg.detail.record.id;
      st.invocation = msg.detail.record;
      if (!same) {
        st.lines = [];
        seqs.clear();
        st.following = true;
        st.scrollTop = 0;
      }
      for (const l of msg.detail.logs) if (!seqs.has(l.seq)) (seqs.add(l.seq), st.lines.push(l));
      st.lines.sort((a, b) => a.seq - b.seq);
      renderHeader();
      renderAll();
      if (same && !st.following) list.scrollTop = st.scrollTop;
      if (pendingReveal !== undefined) {
        reveal(pendingReveal);
        pendingReveal = undefined;
      }
      persist();
      break;
    }
    case 'log':
      if (st.invocation && msg.line.invocationId !== st.invocation.id) return;
      addLine(msg.line);
      break;
    case 'state':
      if (st.invocation && msg.invocation.id !== st.invocation.id) return;
      st.invocation = msg.invocation;
      renderHeader();
      persistSoon();
      break;
    case 'reveal':
      if (st.invocation?.id !== msg.invocationId || !st.lines.some((l) => l.seq >= msg.seq)) pendingReveal = msg.seq;
      else reveal(msg.seq);
      break;
  }
});

renderHeader();
renderAll();
if (!st.following) list.scrollTop = st.scrollTop;
vs.post({ type: 'ready' });
