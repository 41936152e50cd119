'use strict';
/**
 * Extracts structured data from product catalogue pages with the shared browser.
 *
 * trenv gives an agent with "browser": true its own browser context in the shared Chromium and puts
 * its CDP endpoint in TRENV_BROWSER_CDP; playwright-core connects to it as to any Chromium.
 *
 * Event: { "urls": ["http://127.0.0.1:8089/catalog/1", ...] }
 * Result: { pages: [{ url, title, heading, products: [{ name, price, stock }], next }], totals }
 */
const { chromium } = require('playwright-core');

async function extract(page) {
  return page.evaluate(() => {
    const text = (el) => (el ? el.textContent.trim() : null);
    const rows = [...document.querySelectorAll('table.products tbody tr')].map((tr) => {
      const cells = [...tr.querySelectorAll('td')].map((td) => td.textContent.trim());
      return { name: cells[0], price: Number(cells[1].replace(/[^0-9.]/g, '')), stock: Number(cells[2]) };
    });
    const next = document.querySelector('a[rel=next]');
    return { title: document.title, heading: text(document.querySelector('h1')), products: rows, next: next ? next.href : null };
  });
}

exports.handler = async (event, context) => {
  const endpoint = process.env.TRENV_BROWSER_CDP;
  if (!endpoint) throw new Error('no browser: set "browser": true in trenv.json');
  const urls = Array.isArray(event.urls) ? event.urls : [];
  if (!urls.length) throw new TypeError('event.urls must list the pages to read');
  const browser = await chromium.connectOverCDP(endpoint);
  try {
    const ctx = browser.contexts()[0];
    const page = await ctx.newPage();
    const pages = [];
    for (const url of urls) {
      await page.goto(url, { waitUntil: 'domcontentloaded' });
      const data = await extract(page);
      context.logger.info('page read', { url, products: data.products.length });
      pages.push({ url, ...data });
    }
    await page.close();
    const all = pages.flatMap((p) => p.products);
    return {
      pages,
      totals: { products: all.length, inStock: all.filter((p) => p.stock > 0).length, value: Number(all.reduce((a, p) => a + p.price * p.stock, 0).toFixed(2)) },
    };
  } finally {
    await browser.close(); // disconnects; the shared browser keeps running
  }
};
