import { expect, test } from '@playwright/test';
import { openRun, startDemo } from './helpers';

const MODIFY_SPEC = `
name = "modify-e2e"
[[nodes]]
id = "draft"
label = "Draft"
kind = "simulate"
duration = "600ms"
cost = 0.1
[[nodes]]
id = "review"
label = "Review"
kind = "gate"
needs = ["draft"]
title = "Good enough?"
options = ["approve", "reject", "modify"]
[[nodes]]
id = "publish"
label = "Publish"
kind = "simulate"
needs = ["review"]
duration = "200ms"
`;

test('modify sends the work back with feedback, then the gate returns', async ({ page, request }) => {
  const response = await request.post('/api/dags', {
    headers: { 'content-type': 'application/toml' },
    data: MODIFY_SPEC,
  });
  expect(response.status()).toBe(201);
  const { dag_id: dagId } = await response.json();
  await openRun(page, dagId);

  const gate = page.getByTestId('gate-review');
  await expect(gate).toBeVisible();
  const modify = gate.getByTestId('modify');
  await expect(modify).toBeDisabled();
  await gate.getByTestId('feedback').fill('Shorter, with sources.');
  await expect(modify).toBeEnabled();
  await modify.click();

  // The upstream node runs again and the gate waits again.
  await expect(page.getByTestId('gate-review')).toBeHidden();
  await expect(page.getByTestId('node-draft')).toHaveAttribute('data-status', 'running');
  await expect(page.getByTestId('gate-review')).toBeVisible();
  const run = await (await request.get(`/api/dags/${dagId}`)).json();
  expect(run.nodes.draft.output.feedback).toBe('Shorter, with sources.');
  expect(run.nodes.review.metrics.attempt).toBe(2);

  await page.getByTestId('gate-review').getByTestId('approve').click();
  await expect(page.getByTestId('run-state')).toHaveText('completed');
});

test('an invalid spec is refused with a message naming the node and field', async ({ request }) => {
  const response = await request.post('/api/dags', {
    headers: { 'content-type': 'application/toml' },
    data: 'name = "bad"\n[[nodes]]\nid = "a"\nkind = "simulate"\nduration = "soon"\n',
  });
  expect(response.status()).toBe(400);
  const body = await response.json();
  expect(body.error).toContain('"a"');
  expect(body.error).toContain('duration');
});

test('decisions show live on every open page, and the timeline keeps the history', async ({ page, request, context }) => {
  const dagId = await startDemo(request);
  const second = await context.newPage();
  await openRun(page, dagId);
  await openRun(second, dagId);
  await expect(second.getByTestId('decisions')).toContainText('No gate has been decided yet.');
  await page.getByTestId('gate-review').getByTestId('approve').click();
  await expect(second.getByTestId('decision')).toContainText('review by admin');
  await expect(second.getByTestId('gate-review')).toBeHidden();
  await expect(page.getByTestId('run-state')).toHaveText('completed');

  // A fresh load of the finished run shows its whole story from the log.
  await page.reload();
  await expect(page.getByTestId('timeline')).toContainText('admin: approve review');
  await expect(page.getByTestId('timeline')).toContainText('run completed');
  await expect(page.getByTestId('decision')).toHaveCount(1);
  await second.close();
});
