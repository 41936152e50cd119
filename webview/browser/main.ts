/**
 * Live browser view: the frames the daemon screencasts from one running agent's page, with its
 * title and URL. Read-only: nothing here reaches the page.
 */
import './browser.css';
import { connect } from '../shared/api';
import { h } from '../shared/dom';
import type { BrowserFrameView } from '../shared/messages';

const vs = connect<'browser', Record<string, never>>('browser');
const titleEl = h('span', { class: 'title' }, 'Browser');
const urlEl = h('span', { class: 'url' });
const badge = h('span', { class: 'badge' }, 'waiting');
const img = h('img', { alt: 'the agent page' });
const empty = h('div', { class: 'empty' }, 'Waiting for the agent to open a page…');
const stage = h('div', { class: 'stage' }, empty);
const foot = h('footer', {}, 'Read-only live view of the agent’s page in the shared browser.');
document.getElementById('app')!.replaceWith(h('header', {}, titleEl, urlEl, badge), stage, foot);
let frames = 0;

function draw(f: BrowserFrameView): void {
  if (img.parentElement !== stage) stage.replaceChildren(img);
  img.src = `data:image/jpeg;base64,${f.data}`;
  titleEl.textContent = f.title || '(untitled)';
  urlEl.textContent = f.url;
  urlEl.title = f.url;
  badge.textContent = 'live';
  badge.className = 'badge live';
  frames++;
  foot.textContent = `Read-only live view · ${f.width}×${f.height} · ${frames} frame${frames === 1 ? '' : 's'}`;
}

function end(reason: string): void {
  badge.textContent = 'ended';
  badge.className = 'badge ended';
  foot.textContent = `The view ended: ${reason}.`;
}

vs.onMessage((m) => {
  if (m.type === 'init') {
    document.title = `Browser · ${m.agent}`;
    if (m.frame) draw(m.frame);
    if (m.ended) end(m.ended);
  } else if (m.type === 'frame') draw(m);
  else if (m.type === 'ended') end(m.reason);
});
vs.post({ type: 'ready' });
