import { expect, test } from '@playwright/test';
import { openRun, startSpec } from './helpers';

// `flaky` fails on its first attempt and works on the next; `after` waits for it.
const FLAKY = `
name = "repair-e2e"
[[nodes]]
id = "prepare"
kind = "command"
run = "echo prepared"
[[nodes]]
id = "flaky"
kind = "command"
needs = ["prepare"]
run = '[ "$DAGSTREAM_ATTEMPT" -ge 2 ] || { echo "first try fails" >&2; exit 3; }; echo "attempt $DAGSTREAM_ATTEMPT works"'
[[nodes]]
id = "after"
kind = "simulate"
needs = ["flaky"]
duration = "1s"
`;

test('a failed run is retried from its node panel, then re-run from a node, then run again', async ({ page, request }) => {
  const dagId = await startSpec(request, FLAKY);
  await openRun(page, dagId);
  await expect(page.getByTestId('run-state')).toHaveText('failed');
  await expect(page.getByTestId('node-after')).toHaveAttribute('data-status', 'skipped');

  // A skipped node cannot be re-run: the panel says why and offers nothing.
  await page.getByTestId('gnode-after').click();
  const panel = page.getByTestId('node-panel');
  await expect(panel.getByTestId('repair-plan')).toHaveText('node "after" needs "flaky", which is failed: retry "flaky" instead');
  await expect(panel.getByTestId('rerun-node')).toBeDisabled();
  await expect(panel.getByTestId('retry-node')).toHaveCount(0);

  // The failed node: Retry says what runs again, and the failed run goes on to complete.
  await page.getByTestId('gnode-flaky').click();
  await expect(panel.getByTestId('repair-plan')).toHaveText('Runs again: flaky, after');
  await panel.getByTestId('retry-node').click();
  await expect(page.getByTestId('run-state')).toHaveText('completed');
  await expect(page.getByTestId('node-flaky')).toHaveAttribute('data-status', 'completed');
  await expect(panel.getByTestId('panel-status')).toHaveText('completed');
  await expect(page.getByTestId('timeline')).toContainText('admin: retry flaky (2 node(s) run again)');
  let run = await (await request.get(`/api/dags/${dagId}`)).json();
  expect(run.nodes.prepare.metrics.attempt).toBe(1);
  expect(run.nodes.flaky.metrics.attempt).toBe(2);
  expect(run.repairs.map((r: any) => [r.action, r.node_id, r.repaired_by])).toEqual([['retry', 'flaky', 'admin']]);

  // Re-run from the completed node: it and what follows run again, live on the page.
  await expect(panel.getByTestId('retry-node')).toHaveCount(0);
  await expect(panel.getByTestId('repair-plan')).toHaveText('Runs again: flaky, after');
  await panel.getByTestId('rerun-node').click();
  await expect(page.getByTestId('run-state')).toHaveText('running');
  await expect(page.getByTestId('run-state')).toHaveText('completed');
  run = await (await request.get(`/api/dags/${dagId}`)).json();
  expect(run.nodes.prepare.metrics.attempt).toBe(1);
  expect(run.nodes.flaky.metrics.attempt).toBe(3);
  expect(run.nodes.after.metrics.attempt).toBe(2);

  // Run again: a new run of the same spec, and the browser is sent to it.
  await page.getByTestId('run-again').click();
  await expect(page).not.toHaveURL(new RegExp(`/dags/${dagId}$`));
  await expect(page).toHaveURL(/\/dags\/[0-9a-f]{12}$/);
  await expect(page.getByRole('heading', { name: 'repair-e2e' })).toBeVisible();
  await expect(page.getByTestId('run-state')).toHaveText('failed');
});
