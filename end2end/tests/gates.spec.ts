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
  await expect(second.getByTestId('decision')).toContainText('Review outline by admin');
  await expect(second.getByTestId('gate-review')).toBeHidden();
  await expect(page.getByTestId('run-state')).toHaveText('completed');

  // A fresh load of the finished run shows its whole story from the log.
  await page.reload();
  await expect(page.getByTestId('timeline')).toContainText('admin: approve review');
  await expect(page.getByTestId('timeline')).toContainText('run completed');
  await expect(page.getByTestId('decision')).toHaveCount(1);
  await second.close();
});

const FORM_SPEC = `
name = "form-e2e"
[[nodes]]
id = "review"
label = "Review"
kind = "gate"
title = "Shape the report"
inputs = [
  { name = "tone", type = "enum", options = ["short", "long"] },
  { name = "max_rows", type = "integer", min = 1, max = 1000, label = "Rows at most" },
  { name = "note", type = "text", required = false },
]
[[nodes]]
id = "write"
label = "Write"
kind = "command"
needs = ["review"]
run = 'printf "{\\"output\\": %s}\\n" "$(tr -d "\\n" < "$DAGSTREAM_INPUTS")" >> "$DAGSTREAM_REPORT"'
`;

test('a gate with a form: a bad value is refused naming the field, good values reach what follows', async ({ page, request }) => {
  const response = await request.post('/api/dags', { headers: { 'content-type': 'application/toml' }, data: FORM_SPEC });
  expect(response.status()).toBe(201);
  const { dag_id: dagId } = await response.json();
  await openRun(page, dagId);
  const card = page.getByTestId('gate-review');
  await expect(card.getByTestId('gate-form')).toBeVisible();
  await card.getByTestId('input-tone').selectOption('long');
  await card.getByTestId('input-max_rows').fill('5000');
  await card.getByTestId('approve').click();
  await expect(page.getByTestId('notice')).toContainText('field "max_rows": 5000 is outside 1 to 1000');
  await expect(page.getByTestId('node-review')).toHaveAttribute('data-status', 'waiting');

  await card.getByTestId('input-max_rows').fill('250');
  await card.getByTestId('input-note').fill('for the board');
  await card.getByTestId('approve').click();
  await expect(page.getByTestId('node-write')).toHaveAttribute('data-status', 'completed', { timeout: 20_000 });
  const run = await (await request.get(`/api/dags/${dagId}`)).json();
  const values = { tone: 'long', max_rows: 250, note: 'for the board' };
  expect(run.decisions[0].inputs).toEqual(values);
  expect(run.nodes.write.output.review.inputs).toEqual(values);
});
