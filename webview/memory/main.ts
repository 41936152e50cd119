/**
 * Memory webview: live uPlot charts of RSS, PSS, shared and private memory (MiB) for all sandboxes
 * together and for each instance, with the baselines (what a cold start / a CRIU copy would take)
 * drawn as dashed lines beside them, and a table comparing now/peak with the baselines.
 */
import 'uplot/dist/uPlot.min.css';
import './memory.css';
import uPlot from 'uplot';
import { connect } from '../shared/api';
import { clear, fmtMiB, h, onThemeChange, themeColor } from '../shared/dom';
import type { MemoryBaseline, MemorySample } from '../shared/messages';
import { BASELINE_COLORS, Columns, instanceColumns, latest, METRICS, totalColumns } from './series';

/** Samples older than this (relative to the newest) are dropped: the charts show a moving window. */
const WINDOW_MS = 15 * 60 * 1000;
/** Instance charts drawn (the most recently active); all instances count in the total. */
const MAX_INSTANCE_CHARTS = 12;

interface Instance {
  id: string;
  label: string;
  samples: MemorySample[];
}

const vs = connect<'memory', Record<string, never>>('memory');
const instances = new Map<string, Instance>();
const baselines = new Map<string, MemoryBaseline>();

// ---------------------------------------------------------------- layout

const summaryEl = h('table', { class: 'summary' });
const totalCard = h('section', { class: 'card total' });
const grid = h('div', { class: 'grid' });
const emptyEl = h('div', { class: 'empty' }, 'No memory samples yet. Invoke an agent: its sandbox memory appears here while it runs.');
const countEl = h('span', { class: 'dim' });
const content = h('div', { class: 'content' }, h('section', { class: 'card summary-card' }, summaryEl), totalCard, grid);
document.getElementById('app')!.append(h('div', { class: 'toolbar' }, h('span', { class: 'title' }, 'Memory'), countEl), content, emptyEl);

// ---------------------------------------------------------------- charts

interface Chart {
  el: HTMLElement;
  plot?: uPlot;
  height: number;
  /** the baselines the plot was built with (a new baseline means new series: rebuild) */
  shape: string;
}
const charts = new Map<string, Chart>(); // 'total' | instance id

function axisValues(_u: uPlot, vals: number[]): string[] {
  return vals.map((v) => (v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1)));
}

function options(width: number, height: number, total: boolean, bl: readonly MemoryBaseline[]): uPlot.Options {
  const fg = themeColor('--vscode-foreground', '#cccccc');
  const grid = themeColor('--vscode-editorWidget-border', '#454545');
  const fmt = (_u: uPlot, v: number | null) => (v == null ? '–' : `${v.toFixed(1)} MiB`);
  return {
    width,
    height,
    cursor: { drag: { x: false, y: false }, points: { size: 6 } },
    scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    axes: [
      { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, font: '11px sans-serif' },
      { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, values: axisValues, label: 'MiB', labelSize: 16, labelFont: '11px sans-serif', font: '11px sans-serif', size: 44 },
    ],
    series: [
      { label: 'time', value: (_u, v) => (v == null ? '–' : new Date(v * 1000).toLocaleTimeString()) },
      // points: uPlot's default, drawn while the samples are sparse enough to tell apart
      ...METRICS.map((m) => ({ label: m.label, stroke: themeColor(m.color[0], m.color[1]), width: m.key === 'pssKb' ? 2 : 1.5, value: fmt })),
      ...bl.map((b, i) => {
        const c = BASELINE_COLORS[i % BASELINE_COLORS.length]!;
        return { label: total ? `${b.label} PSS × live` : `${b.label} PSS`, stroke: themeColor(c[0], c[1]), width: 1.5, dash: [6, 4], value: fmt, points: { show: false }, class: 'baseline' };
      }),
    ],
    // one legend (with values under the cursor) on the total chart; the instance charts use the same colours
    legend: { show: total, live: true },
  };
}

function ensureChart(key: string, title: string, total: boolean): Chart {
  let c = charts.get(key);
  if (!c) {
    const el = h('div', { class: 'plot' });
    c = { el, height: total ? 220 : 150, shape: '' };
    charts.set(key, c);
    const card = total ? totalCard : h('section', { class: 'card instance', 'data-instance': key });
    clear(card);
    card.append(h('header', {}, h('span', { class: 'chart-title' }, title), h('span', { class: 'now dim' })), el);
    if (!total) grid.append(card);
    new ResizeObserver(() => resize(c!)).observe(el);
  }
  return c;
}

function resize(c: Chart): void {
  const w = Math.floor(c.el.clientWidth);
  if (c.plot && w > 0 && w !== c.plot.width) c.plot.setSize({ width: w, height: c.height });
}

function draw(c: Chart, cols: Columns, total: boolean): void {
  const bl = [...baselines.values()];
  const shape = bl.map((b) => b.label).join('\n');
  if (c.plot && c.shape !== shape) {
    c.plot.destroy();
    c.plot = undefined;
  }
  if (!c.plot) {
    c.shape = shape;
    c.plot = new uPlot(options(Math.max(200, Math.floor(c.el.clientWidth)), c.height, total, bl), cols as uPlot.AlignedData, c.el);
  } else c.plot.setData(cols as uPlot.AlignedData);
  // a single sample: uPlot's auto range would span years; show a few seconds around it
  const xs = cols[0]!;
  if (xs.length === 1) c.plot.setScale('x', { min: xs[0]! - 2, max: xs[0]! + 2 });
}

function setNow(key: string, s: MemorySample | undefined, extra = ''): void {
  const el = charts.get(key)?.el.parentElement?.querySelector('.now');
  if (el) el.textContent = s ? `now PSS ${fmtMiB(s.pssKb)} · RSS ${fmtMiB(s.rssKb)}${extra}` : '';
}

// ---------------------------------------------------------------- render

function renderSummary(peakLive: number, totals: Columns): void {
  clear(summaryEl);
  const head = h('tr', {}, h('th', {}, ''), ...METRICS.map((m) => h('th', {}, m.label)));
  const rowOf = (label: string, kb: number[], cls = '') => h('tr', { class: cls }, h('th', { scope: 'row' }, label), ...kb.map((v) => h('td', {}, fmtMiB(v))));
  const lastIdx = totals[0]!.length - 1;
  const nowKb = METRICS.map((_, j) => (lastIdx >= 0 ? totals[1 + j]![lastIdx]! * 1024 : 0));
  const peakKb = METRICS.map((_, j) => Math.max(0, ...totals[1 + j]!) * 1024);
  summaryEl.append(h('thead', {}, head));
  const body = h('tbody', {});
  body.append(rowOf(`All sandboxes now (${instances.size})`, nowKb), rowOf('All sandboxes, peak', peakKb, 'peak'));
  for (const b of baselines.values()) {
    const per = METRICS.map((m) => b.sample[m.key]);
    body.append(rowOf(`${b.label}, per sandbox`, per, 'baseline'));
    if (peakLive > 1) body.append(rowOf(`${b.label} × ${peakLive} (peak live sandboxes)`, per.map((v) => v * peakLive), 'baseline'));
  }
  summaryEl.append(body);
}

let scheduled = false;
function render(): void {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    renderNow();
  });
}

function renderNow(): void {
  const all = [...instances.values()];
  const empty = all.length === 0;
  emptyEl.hidden = !empty;
  content.hidden = empty && baselines.size === 0;
  totalCard.hidden = grid.hidden = empty;
  countEl.textContent = empty ? '' : `${all.length} sandbox${all.length === 1 ? '' : 'es'}`;
  const bl = [...baselines.values()];
  const { cols, peakLive } = totalColumns(
    all.map((i) => i.samples),
    bl,
  );
  renderSummary(peakLive, cols);
  if (empty) return;
  const tc = ensureChart('total', 'All sandboxes', true);
  draw(tc, cols, true);
  const lastTotal = cols[0]!.length - 1;
  const nowEl = totalCard.querySelector('.now');
  if (nowEl) nowEl.textContent = `now PSS ${fmtMiB(cols[2]![lastTotal]! * 1024)} · RSS ${fmtMiB(cols[1]![lastTotal]! * 1024)}`;

  const shown = all.sort((a, b) => (latest(b.samples)?.t ?? 0) - (latest(a.samples)?.t ?? 0)).slice(0, MAX_INSTANCE_CHARTS);
  const shownIds = new Set(shown.map((i) => i.id));
  for (const [key, c] of charts) {
    if (key === 'total' || shownIds.has(key)) continue;
    c.plot?.destroy();
    c.el.parentElement?.remove();
    charts.delete(key);
  }
  for (const inst of shown) {
    const c = ensureChart(inst.id, inst.label, false);
    draw(c, instanceColumns(inst.samples, bl), false);
    const l = latest(inst.samples);
    setNow(inst.id, l, l ? ` · ${l.processes} proc` : '');
  }
  // keep the cards in the order of recent activity
  for (const inst of shown) {
    const card = charts.get(inst.id)?.el.parentElement;
    if (card) grid.append(card);
  }
}

function addSample(id: string, label: string, s: MemorySample): void {
  let inst = instances.get(id);
  if (!inst) instances.set(id, (inst = { id, label, samples: [] }));
  inst.label = label;
  inst.samples.push(s);
  const cutoff = s.t - WINDOW_MS;
  if (inst.samples[0] && inst.samples[0].t < cutoff) inst.samples = inst.samples.filter((x) => x.t >= cutoff);
}

onThemeChange(() => {
  for (const c of charts.values()) {
    c.plot?.destroy();
    c.plot = undefined;
  }
  render();
});

vs.onMessage((msg) => {
  switch (msg.type) {
    case 'init':
      instances.clear();
      baselines.clear();
      for (const i of msg.snapshot.instances) for (const s of i.samples) addSample(i.instanceId, i.label, s);
      for (const b of msg.snapshot.baselines) baselines.set(b.label, b);
      render();
      break;
    case 'memory':
      addSample(msg.instanceId, msg.label, msg.sample);
      render();
      break;
    case 'baseline':
      baselines.set(msg.label, { label: msg.label, sample: msg.sample });
      render();
      break;
  }
});

renderNow();
vs.post({ type: 'ready' });
