import { expect, test, type Page } from '@playwright/test';
import { openRunListAndStartDemo, startDemo } from './helpers';

// The wasm is split per page (`cargo leptos build --split`): the run list and the run view each
// load their own code next to the shared main module, and a page never downloads the other's.
const RUN_VIEW_CODE = /split_run_page_\d+\.wasm$/;
const RUN_LIST_CODE = /split_runs_page_\d+\.wasm$/;

/** Records the wasm files the page downloads and every error it reports. */
function watch(page: Page): { wasm: string[]; errors: string[] } {
  const seen = { wasm: [] as string[], errors: [] as string[] };
  page.on('request', (request) => {
    const path = new URL(request.url()).pathname;
    if (path.endsWith('.wasm')) seen.wasm.push(path);
  });
  page.on('console', (message) => {
    if (message.type() === 'error') seen.errors.push(message.text());
  });
  page.on('pageerror', (error) => seen.errors.push(error.message));
  return seen;
}

test('the run list loads without the run view code, which arrives when a run is opened', async ({ page, request }) => {
  const seen = watch(page);
  const { dagId, row } = await openRunListAndStartDemo(page, request);
  expect(seen.wasm.some((path) => path.endsWith('/dagstream.wasm'))).toBe(true);
  expect(seen.wasm.some((path) => RUN_LIST_CODE.test(path))).toBe(true);
  expect(seen.wasm.filter((path) => RUN_VIEW_CODE.test(path))).toEqual([]);

  // Opening the run loads its page, which fetches the run view's code and goes live.
  await row.getByRole('link').click();
  await expect(page).toHaveURL(new RegExp(`/dags/${dagId}$`));
  await expect(page.getByTestId('connection')).toHaveAttribute('data-state', 'live');
  await expect(page.getByTestId('nodes')).toContainText('Research the web');
  expect(seen.wasm.some((path) => RUN_VIEW_CODE.test(path))).toBe(true);
  const listCodeFetches = seen.wasm.filter((path) => RUN_LIST_CODE.test(path)).length;

  // And back to the list through the header link: the list again, hydrated, with its own code.
  await page.locator('header.topbar a.brand').click();
  await expect(page).toHaveURL(/\/$/);
  await expect(page.locator(`[data-testid="run-row"][data-dag-id="${dagId}"]`)).toBeVisible();
  await expect(page.getByTestId('start-panel')).toHaveAttribute('data-hydrated', 'true');
  expect(seen.wasm.filter((path) => RUN_LIST_CODE.test(path)).length).toBeGreaterThan(listCodeFetches);
  expect(seen.errors).toEqual([]);
});

/** Whether `html` has a `<link rel="preload">` whose address matches `file`. */
function preloads(html: string, file: RegExp): boolean {
  return [...html.matchAll(/<link\b[^>]*>/g)].some(([tag]) => /rel="preload"/.test(tag) && file.test(tag.match(/href="([^"]*)"/)?.[1] ?? ''));
}

test('a run opened directly hydrates with its own code only', async ({ page, request }) => {
  const dagId = await startDemo(request);
  // The server names the page's own split file in <head>, so it downloads next to the main module.
  const html = await (await page.request.get(`/dags/${dagId}`)).text();
  expect(preloads(html, RUN_VIEW_CODE)).toBe(true);
  expect(preloads(html, RUN_LIST_CODE)).toBe(false);
  const seen = watch(page);
  await page.goto(`/dags/${dagId}`);
  await expect(page.getByTestId('connection')).toHaveAttribute('data-state', 'live');
  await expect(page.getByTestId('node-research_web')).toHaveAttribute('data-status', /running|completed/);
  expect(seen.wasm.some((path) => RUN_VIEW_CODE.test(path))).toBe(true);
  expect(seen.wasm.filter((path) => RUN_LIST_CODE.test(path))).toEqual([]);
  expect(seen.errors).toEqual([]);
});
