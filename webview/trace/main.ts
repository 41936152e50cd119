/**
 * Restore trace webview: the spans of one invocation as a waterfall (one row per span, indented by
 * nesting, bars placed by start/end relative to the first span), stepped through with buttons or
 * keys (←/→, k/j, ↑/↓, Home/End). The detail panel shows the current step: duration, offset, memory
 * delta, the sandbox state after it and its attributes, and opens the logs at that moment.
 */
import './trace.css';
import { connect } from '../shared/api';
import { clockMapping, firstLogAtOrAfter, nsToEpochMs } from '../shared/clock';
import { clear, fmtClock, fmtMiB, fmtMs, h } from '../shared/dom';
import type { ClockMapping, InvocationDetail } from '../shared/messages';
import { buildSteps, extent, memoryDelta, spanKey, Step, ticks } from './model';

interface State {
  invocationId?: string;
  stepKey?: string;
}

const vs = connect<'trace', State>('trace');
const saved = vs.getState() ?? {};
let detail: InvocationDetail | undefined;
let steps: Step[] = [];
let mapping: ClockMapping | undefined;
let index = 0;

// ---------------------------------------------------------------- layout

const titleEl = h('span', { class: 'title' }, 'Restore trace');
const stateEl = h('span', { class: 'badge' });
const metaEl = h('span', { class: 'dim meta' });
const first = h('button', { title: 'First step (Home)', 'aria-label': 'First step' }, '|◀');
const prev = h('button', { title: 'Previous step (← or k)', 'aria-label': 'Previous step' }, '◀ Prev');
const counter = h('span', { class: 'counter', 'aria-live': 'polite' });
const next = h('button', { title: 'Next step (→ or j)', 'aria-label': 'Next step' }, 'Next ▶');
const last = h('button', { title: 'Last step (End)', 'aria-label': 'Last step' }, '▶|');
const axis = h('div', { class: 'axis' });
const rows = h('div', { class: 'rows', role: 'listbox', 'aria-label': 'Spans', tabindex: 0 });
const detailEl = h('section', { class: 'detail', 'aria-label': 'Current step' });
const emptyEl = h('div', { class: 'empty' }, 'No trace yet. Spans appear here while an invocation restores its sandbox.');
const main = h('div', { class: 'main' }, h('div', { class: 'timeline' }, h('div', { class: 'axis-row' }, h('div', { class: 'names-head dim' }, 'Span'), axis), rows), detailEl);

document.getElementById('app')!.append(
  h('div', { class: 'toolbar' }, titleEl, stateEl, metaEl, h('span', { class: 'spacer' }), h('span', { class: 'stepper' }, first, prev, counter, next, last)),
  main,
  emptyEl,
);

first.addEventListener('click', () => go(0));
prev.addEventListener('click', () => go(index - 1));
next.addEventListener('click', () => go(index + 1));
last.addEventListener('click', () => go(steps.length - 1));
window.addEventListener('keydown', (e) => {
  if (e.altKey || e.ctrlKey || e.metaKey || (e.target instanceof HTMLElement && e.target.closest('input, textarea'))) return;
  const to: Record<string, number> = { ArrowLeft: index - 1, k: index - 1, ArrowUp: index - 1, ArrowRight: index + 1, j: index + 1, ArrowDown: index + 1, Home: 0, End: steps.length - 1 };
  if (!(e.key in to) || !steps.length) return;
  e.preventDefault();
  go(to[e.key]!);
});

// ---------------------------------------------------------------- rendering

function pct(ms: number, totalMs: number): number {
  return totalMs > 0 ? (ms / totalMs) * 100 : 0;
}

function renderTimeline(): void {
  clear(rows);
  clear(axis);
  const { totalMs } = extent(steps);
  for (const t of ticks(totalMs)) {
    const tick = h('span', { class: 'tick' }, fmtMs(t));
    const p = pct(t, totalMs);
    if (p > 92) {
      tick.classList.add('end');
      tick.style.right = `${100 - p}%`;
    } else tick.style.left = `${p}%`;
    axis.append(tick);
    const line = h('span', { class: 'gridline' });
    line.style.left = `${p}%`;
    axis.append(line);
  }
  steps.forEach((s, i) => {
    const left = pct(s.offsetMs, totalMs);
    const width = pct(s.span.durationMs, totalMs);
    const bar = h('span', { class: `bar cat-${category(s.span.name)}` });
    bar.style.left = `${left}%`;
    bar.style.width = `${width}%`;
    const label = h('span', { class: 'bar-label' }, fmtMs(s.span.durationMs));
    if (left + width > 70) {
      label.classList.add('before');
      label.style.right = `${100 - left}%`;
    } else label.style.left = `${left + width}%`;
    const name = h('span', { class: 'name', title: s.span.name }, s.span.name);
    name.style.paddingLeft = `${8 + s.depth * 14}px`;
    const row = h('div', { class: 'row', role: 'option', 'data-index': i, 'aria-selected': 'false' }, name, h('span', { class: 'track' }, bar, label));
    row.addEventListener('click', () => go(i));
    rows.append(row);
  });
}

/** Colour by what the span is about (the prefix before the first dot). */
function category(name: string): string {
  const p = name.split('.')[0]!;
  return ['sandbox', 'pool', 'repurpose', 'template', 'process', 'runtime', 'handler', 'cleanup'].includes(p) ? p : 'other';
}

function signed(kb: number): string {
  const s = fmtMiB(Math.abs(kb));
  return kb > 0 ? `+${s}` : kb < 0 ? `−${s}` : '±0';
}

function dl(...pairs: Array<[string, Node | string]>): HTMLElement {
  const el = h('dl', {});
  for (const [k, v] of pairs) el.append(h('dt', {}, k), h('dd', {}, v));
  return el;
}

function renderDetail(): void {
  clear(detailEl);
  const s = steps[index];
  if (!s || !detail) return;
  const sp = s.span;
  const m = mapping!;
  const endEpoch = nsToEpochMs(sp.endNs, m);
  const log = firstLogAtOrAfter(detail.logs, endEpoch);
  const delta = memoryDelta(s);
  const st = sp.state;

  const deltaEl = delta
    ? h(
        'span',
        { class: 'delta' },
        h('span', { class: `d ${delta.pssKb > 0 ? 'up' : delta.pssKb < 0 ? 'down' : ''}` }, `PSS ${signed(delta.pssKb)}`),
        h('span', { class: `d ${delta.rssKb > 0 ? 'up' : delta.rssKb < 0 ? 'down' : ''}` }, `RSS ${signed(delta.rssKb)}`),
        h('span', { class: 'dim' }, `shared ${signed(delta.sharedKb)}, private ${signed(delta.privateKb)}`),
        h('span', { class: 'dim vs' }, s.prev ? `vs. the state after ${s.prev.span.name}` : 'vs. an empty sandbox'),
      )
    : h('span', { class: 'dim' }, 'no memory sample for this step');

  const mem = st?.memory;
  const stateDl = st
    ? dl(
        ['Processes', String(st.processes)],
        ['App dir', h('span', { class: 'mono path', title: st.appDir ?? '' }, st.appDir ?? '—')],
        ['Template', st.template ?? 'none (cold runtime)'],
        ['Memory', mem ? h('span', { class: 'mem' }, `RSS ${fmtMiB(mem.rssKb)} · PSS ${fmtMiB(mem.pssKb)} · shared ${fmtMiB(mem.sharedKb)} · private ${fmtMiB(mem.privateKb)}${mem.cgroupBytes !== undefined ? ` · cgroup ${fmtMiB(mem.cgroupBytes / 1024)}` : ''}`) : '—'],
        ...(st.note ? ([['Note', st.note]] as Array<[string, string]>) : []),
      )
    : h('p', { class: 'dim' }, 'The daemon recorded no sandbox state for this step.');

  const attrs = Object.entries(sp.attrs ?? {});
  const logsBtn = h('button', { class: 'primary open-logs', title: 'Open the logs at the first line written at or after this step ended' }, 'Show logs at this step');
  logsBtn.addEventListener('click', () => vs.post({ type: 'openLogs', invocationId: detail!.record.id, seq: log?.seq, atEpochMs: endEpoch, mapping: m }));

  detailEl.append(
    h('header', {}, h('h2', { class: 'step-name' }, sp.name), h('span', { class: 'dim' }, `step ${index + 1} of ${steps.length}`)),
    dl(
      ['Duration', h('span', { class: 'duration' }, fmtMs(sp.durationMs))],
      ['Offset', `+${fmtMs(s.offsetMs)} from the first span`],
      ['Ended at', h('span', { title: `monotonic ${sp.endNs} ns; epoch = ns/1e6 ${m.offsetMs >= 0 ? '+' : '−'} ${Math.abs(m.offsetMs).toFixed(1)} ms (${m.source})` }, fmtClock(endEpoch))],
      ['Memory Δ', deltaEl],
    ),
    h('h3', {}, 'Sandbox state after this step'),
    stateDl,
    h('h3', {}, 'Attributes'),
    attrs.length
      ? h('table', { class: 'attrs' }, ...attrs.map(([k, v]) => h('tr', {}, h('td', { class: 'mono k' }, k), h('td', { class: 'mono v' }, String(v)))))
      : h('p', { class: 'dim' }, 'none'),
    h(
      'div',
      { class: 'actions' },
      logsBtn,
      h('span', { class: 'dim' }, log ? `log line #${log.seq} at ${fmtClock(log.t)}` : 'no log line after this step'),
    ),
  );
}

function renderSelection(scroll: boolean): void {
  rows.querySelectorAll('.row').forEach((r, i) => {
    const on = i === index;
    r.classList.toggle('current', on);
    r.setAttribute('aria-selected', String(on));
    if (on && scroll) r.scrollIntoView({ block: 'nearest' });
  });
  counter.textContent = steps.length ? `Step ${index + 1} / ${steps.length}` : 'No steps';
  first.disabled = prev.disabled = index <= 0;
  next.disabled = last.disabled = index >= steps.length - 1;
  renderDetail();
}

function renderHeader(): void {
  const r = detail?.record;
  titleEl.textContent = r ? `Restore trace: ${r.agent}` : 'Restore trace';
  stateEl.hidden = !r;
  stateEl.textContent = r?.state ?? '';
  stateEl.className = `badge state-${r?.state ?? 'none'}`;
  const { totalMs } = extent(steps);
  metaEl.textContent = r ? `${r.start ?? ''} sandbox · ${r.template ? `template ${r.template}` : 'cold runtime'} · ${steps.length} spans over ${fmtMs(totalMs)}` : '';
  main.hidden = !steps.length;
  emptyEl.hidden = steps.length > 0;
}

function go(i: number): void {
  if (!steps.length) return;
  const to = Math.max(0, Math.min(steps.length - 1, i));
  if (to === index && rows.querySelector('.current')) return;
  index = to;
  renderSelection(true);
  const s = steps[index]!;
  vs.setState({ invocationId: detail?.record.id, stepKey: s.key });
  if (detail) vs.post({ type: 'step', invocationId: detail.record.id, index, name: s.span.name });
}

function rebuild(keepKey: string | undefined): void {
  const wasLast = steps.length > 0 && index === steps.length - 1;
  steps = buildSteps(detail?.trace ?? []);
  mapping = detail ? clockMapping(detail) : undefined;
  const k = steps.findIndex((s) => s.key === keepKey);
  index = k >= 0 && !(wasLast && keepKey === undefined) ? k : 0;
  renderHeader();
  renderTimeline();
  renderSelection(true);
}

// ---------------------------------------------------------------- messages

vs.onMessage((msg) => {
  switch (msg.type) {
    case 'init': {
      const same = msg.detail.record.id === (detail?.record.id ?? saved.invocationId);
      const keep = same ? (steps[index]?.key ?? saved.stepKey) : undefined;
      detail = { ...msg.detail, trace: [...msg.detail.trace], logs: [...msg.detail.logs] };
      rebuild(keep);
      vs.setState({ invocationId: detail.record.id, stepKey: steps[index]?.key });
      break;
    }
    case 'span': {
      if (!detail || msg.span.invocationId !== detail.record.id) return;
      if (steps.some((s) => s.key === spanKey(msg.span))) return; // already in the init
      const following = index === steps.length - 1;
      detail.trace.push(msg.span);
      const keep = steps[index]?.key;
      rebuild(keep);
      if (following) go(steps.length - 1);
      break;
    }
    case 'state':
      if (!detail || msg.invocation.id !== detail.record.id) return;
      detail.record = { ...detail.record, ...msg.invocation };
      renderHeader();
      break;
  }
});

renderHeader();
vs.post({ type: 'ready' });
