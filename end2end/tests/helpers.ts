import { expect, type APIRequestContext, type Page } from '@playwright/test';

/** Starts the bundled demo run over REST and answers its dag_id. */
export async function startDemo(request: APIRequestContext): Promise<string> {
  const response = await request.post('/api/dags?example=demo');
  expect(response.status()).toBe(201);
  const body = await response.json();
  expect(typeof body.dag_id).toBe('string');
  return body.dag_id;
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
