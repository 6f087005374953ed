import { resolve, join } from 'node:path';
import { expect, test, type APIRequestContext } from '@playwright/test';
import { startSpec } from './helpers';

const SCREENSHOTS = resolve(__dirname, '../../docs/screenshots');

// Two versions of one spec: the draft says more in the second, `old` became `polish`.
const V1 = `
name = "digest"
[[nodes]]
id = "fetch"
kind = "simulate"
duration = "50ms"
cost = 0.1
tokens_in = 100
output = { rows = 10 }
[[nodes]]
id = "draft"
kind = "simulate"
needs = ["fetch"]
duration = "150ms"
cost = 0.5
tokens_in = 400
tokens_out = 200
output = { text = "hi", tags = ["news"] }
[[nodes]]
id = "old"
kind = "simulate"
needs = ["draft"]
duration = "50ms"
cost = 0.05
`;
const V2 = V1.replace('cost = 0.5', 'cost = 0.75')
  .replace('tokens_out = 200', 'tokens_out = 350')
  .replace('output = { text = "hi", tags = ["news"] }', 'output = { text = "hello", lang = "en", tags = ["news"] }')
  .replace('id = "old"', 'id = "polish"');

async function completed(request: APIRequestContext, dagId: string) {
  await expect
    .poll(async () => (await (await request.get(`/api/dags/${dagId}`)).json()).state, { timeout: 15_000 })
    .toBe('completed');
}

test('two runs of two versions of a spec, picked in the run list, compared node by node', async ({ page, request }) => {
  const a = await startSpec(request, V1);
  const b = await startSpec(request, V2);
  await completed(request, a);
  await completed(request, b);

  await page.goto('/');
  await expect(page.getByTestId('run-list')).toHaveAttribute('data-feed', 'live');
  await expect(page.getByTestId('compare-hint')).toBeVisible();
  const row = (dagId: string) => page.locator(`[data-testid="run-row"][data-dag-id="${dagId}"]`);
  await row(a).getByTestId('compare-pick').check();
  await row(b).getByTestId('compare-pick').check();
  await page.getByTestId('compare-picked').click();
  await expect(page).toHaveURL(`/compare?a=${a}&b=${b}`);

  // Totals, with B − A.
  await expect(page.getByTestId('total-spend')).toContainText('$0.65');
  await expect(page.getByTestId('total-spend')).toContainText('$0.90');
  await expect(page.getByTestId('total-spend')).toContainText('+$0.25');
  await expect(page.getByTestId('total-tokens')).toContainText('+150');

  // Per node: the same output says so; a changed one lists each change with both values.
  await expect(page.getByTestId('compare-fetch').getByTestId('output-diff')).toHaveText('same');
  const draft = page.getByTestId('compare-draft');
  await expect(draft).toHaveAttribute('data-presence', 'both');
  await expect(draft).toContainText('$0.50 → $0.75');
  await expect(draft).toContainText('+$0.25');
  const changes = draft.getByTestId('output-change');
  await expect(changes).toHaveCount(2);
  await expect(changes.filter({ hasText: '/text' })).toContainText('"hi"');
  await expect(changes.filter({ hasText: '/text' })).toContainText('"hello"');
  await expect(changes.filter({ hasText: '/lang' })).toContainText('"en"');

  // Nodes only one version has are marked.
  await expect(page.getByTestId('compare-old')).toHaveAttribute('data-presence', 'only-a');
  await expect(page.getByTestId('compare-old').getByTestId('only')).toHaveText('only in A');
  await expect(page.getByTestId('compare-polish')).toHaveAttribute('data-presence', 'only-b');

  // The same comparison over REST.
  const api = await (await request.get(`/api/compare?a=${a}&b=${b}`)).json();
  expect(api.nodes.map((n: any) => n.id)).toEqual(['fetch', 'draft', 'old', 'polish']);
  expect((await request.get(`/api/compare?a=${a}&b=nope`)).status()).toBe(404);

  await page.screenshot({ path: join(SCREENSHOTS, 'compare.png'), fullPage: true });
});
