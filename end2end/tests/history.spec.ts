import { expect, test } from '@playwright/test';
import { openRun, startSpec } from './helpers';

const GATED = `
name = "history-e2e"
[[nodes]]
id = "draft"
kind = "simulate"
duration = "300ms"
cost = 0.25
[[nodes]]
id = "review"
kind = "gate"
needs = ["draft"]
title = "Ship the draft?"
options = ["approve", "reject"]
[[nodes]]
id = "publish"
kind = "simulate"
needs = ["review"]
duration = "200ms"
cost = 0.5
`;

test('the history bar scrubs a run in progress and a finished one, by slider and arrow keys, then back to live', async ({ page, request }) => {
  const dagId = await startSpec(request, GATED);
  await openRun(page, dagId);
  const gate = page.getByTestId('gate-review');
  await expect(gate).toBeVisible();
  const scrubber = page.getByTestId('scrubber');
  const at = page.getByTestId('history-at');
  await expect(at).toContainText('live');

  // While the gate waits: back to before the first event, everything pending and no card.
  await scrubber.fill('0');
  await expect(at).toContainText('before the first event');
  await expect(gate).toBeHidden();
  await expect(page.getByTestId('node-draft')).toHaveAttribute('data-status', 'pending');
  await expect(page.getByTestId('pause')).toHaveCount(0);
  await page.getByTestId('go-live').click();
  await expect(at).toContainText('live');
  await expect(gate).toBeVisible();
  await gate.getByTestId('approve').click();
  await expect(page.getByTestId('run-state')).toHaveText('completed');

  // The finished run: to the moment its gate started waiting.
  const events = await (await request.get(`/api/dags/${dagId}/events`)).json();
  const waited = events.find((e: any) => e.type === 'human_gate_waiting').seq;
  const spentThen = events.filter((e: any) => e.type === 'cost_update' && e.seq <= waited).pop().spent;
  await scrubber.fill(String(waited));
  await expect(at).toContainText(`event ${waited} of ${events.length}: review waits: Ship the draft?`);
  await expect(gate).toBeVisible();
  await expect(gate.getByTestId('approve')).toHaveCount(0);
  await expect(page.getByTestId('node-review')).toHaveAttribute('data-status', 'waiting');
  await expect(page.getByTestId('node-publish')).toHaveAttribute('data-status', 'pending');
  await expect(page.getByTestId('gnode-review')).toHaveAttribute('data-status', 'waiting');
  await expect(page.getByTestId('gnode-draft')).toHaveAttribute('data-status', 'completed');
  await expect(page.getByTestId('run-state')).toHaveText('running');
  await expect(page.getByTestId('cost')).toHaveText(`$${spentThen.toFixed(2)}`);
  // The node panel shows the node as it stood then.
  await page.getByTestId('node-publish').click();
  await expect(page.getByTestId('node-panel').getByTestId('panel-status')).toHaveText('pending');

  // Arrow keys step through the log: one back, then one on.
  await page.locator('h1').click();
  await page.keyboard.press('ArrowLeft');
  await expect(at).toContainText(`event ${waited - 1} of`);
  await expect(gate).toBeHidden();
  await page.keyboard.press('ArrowRight');
  await expect(at).toContainText(`event ${waited} of`);
  await expect(gate).toBeVisible();

  // Live: the present again.
  await page.getByTestId('go-live').click();
  await expect(at).toContainText(`live · event ${events.length}`);
  await expect(gate).toBeHidden();
  await expect(page.getByTestId('run-state')).toHaveText('completed');
  await expect(page.getByTestId('gnode-review')).toHaveAttribute('data-status', 'completed');
  await expect(page.getByTestId('node-panel').getByTestId('panel-status')).toHaveText('completed');
});
