import { expect, type APIRequestContext, type Page } from '@playwright/test';

/** Starts the bundled demo run over REST and answers its dag_id. */
export async function startDemo(request: APIRequestContext): Promise<string> {
  const response = await request.post('/api/dags?example=demo');
  expect(response.status()).toBe(201);
  const body = await response.json();
  expect(typeof body.dag_id).toBe('string');
  return body.dag_id;
}

/** Starts a run of the TOML `spec` over REST and answers its dag_id. */
export async function startSpec(request: APIRequestContext, spec: string): Promise<string> {
  const response = await request.post('/api/dags', { headers: { 'content-type': 'application/toml' }, data: spec });
  expect(response.status(), await response.text()).toBe(201);
  return (await response.json()).dag_id;
}

/**
 * Opens the run list, then starts a demo run and waits for its row to appear without a reload
 * (so the list is hydrated and its feed live). Marks the document first (`markDocument`).
 * Answers the run's id and row.
 */
export async function openRunListAndStartDemo(page: Page, request: APIRequestContext) {
  await page.goto('/');
  await expect(page.getByTestId('start-demo')).toBeVisible();
  // The feed connects after hydration; once its first message arrived no change is missed.
  await expect(page.getByTestId('run-list')).toHaveAttribute('data-feed', 'live');
  await markDocument(page);
  const dagId = await startDemo(request);
  const row = page.locator(`[data-testid="run-row"][data-dag-id="${dagId}"]`);
  await expect(row).toBeVisible();
  return { dagId, row };
}

/** Marks the page's document, so `sameDocument` can tell later whether it was reloaded. */
export async function markDocument(page: Page): Promise<void> {
  await page.evaluate(() => ((window as any).__sameDocument = true));
}

/** Whether the page is still the document `markDocument` marked (no reload since). */
export async function sameDocument(page: Page): Promise<boolean> {
  return page.evaluate(() => (window as any).__sameDocument === true);
}

/** Opens a run view and waits until it is hydrated and its stream is live. */
export async function openRun(page: Page, dagId: string): Promise<void> {
  await page.goto(`/dags/${dagId}`);
  await expect(page.getByTestId('connection')).toHaveAttribute('data-state', 'live');
}

/** Node statuses as the page shows them, by node id. */
export async function pageStatuses(page: Page): Promise<Record<string, string>> {
  return page.locator('[data-testid^="node-"]').evaluateAll((rows) =>
    Object.fromEntries(
      rows.map((row) => [row.getAttribute('data-testid')!.slice('node-'.length), row.getAttribute('data-status')!]),
    ),
  );
}

/** Node statuses as the server has them, by node id. */
export async function serverStatuses(request: APIRequestContext, dagId: string): Promise<Record<string, string>> {
  const run = await (await request.get(`/api/dags/${dagId}`)).json();
  return Object.fromEntries(Object.entries(run.nodes).map(([id, node]: [string, any]) => [id, node.status]));
}
