import { expect, test } from '@playwright/test';
import { openRun, startDemo } from './helpers';

test('the graph draws every node, coloured by status, and pans and zooms', async ({ page, request }) => {
  const dagId = await startDemo(request);
  await openRun(page, dagId);
  const svg = page.getByTestId('graph-svg');
  for (const id of ['research_web', 'outline', 'review', 'publish']) {
    await expect(page.getByTestId(`gnode-${id}`)).toBeVisible();
  }
  await expect(page.getByTestId('gnode-review')).toHaveAttribute('data-status', 'waiting');

  const scaleBefore = Number(await svg.getAttribute('data-scale'));
  await svg.scrollIntoViewIfNeeded();
  const box = (await svg.boundingBox())!;
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.wheel(0, -400);
  await expect.poll(async () => Number(await svg.getAttribute('data-scale'))).toBeGreaterThan(scaleBefore);

  const panBefore = await svg.getAttribute('data-pan');
  await page.mouse.move(box.x + 40, box.y + 60);
  await page.mouse.down();
  await page.mouse.move(box.x + 160, box.y + 90, { steps: 5 });
  await page.mouse.up();
  await expect(svg).not.toHaveAttribute('data-pan', panBefore!);

  await page.getByTestId('fit').click();
  await expect.poll(async () => Number(await svg.getAttribute('data-scale'))).toBeLessThanOrEqual(1.25);
});

test('clicking a node opens its panel with output and a live log tail', async ({ page, request }) => {
  const spec = `
name = "logs-e2e"
[[nodes]]
id = "talker"
label = "Talker"
kind = "command"
run = '''
for i in 1 2 3 4 5 6; do echo "line $i"; sleep 0.4; done
echo '{"output": {"said": 6}}' >> "$DAGSTREAM_REPORT"
'''
`;
  const response = await request.post('/api/dags', { headers: { 'content-type': 'application/toml' }, data: spec });
  expect(response.status()).toBe(201);
  const { dag_id: dagId } = await response.json();
  await openRun(page, dagId);
  await page.getByTestId('gnode-talker').click();
  const panel = page.getByTestId('node-panel');
  await expect(panel).toContainText('Talker');
  await expect(panel.getByTestId('panel-log')).toContainText('line 2');
  await expect(panel.getByTestId('panel-log')).toContainText('line 6');
  await expect(panel.getByTestId('panel-status')).toHaveText('completed');
  await expect(panel.getByTestId('panel-output')).toContainText('"said": 6');
  await page.getByTestId('close-panel').click();
  await expect(panel).toBeHidden();
});

test('nodes added while the run goes on appear in the graph', async ({ page, request }) => {
  const response = await request.post('/api/dags?example=planner');
  const { dag_id: dagId } = await response.json();
  await openRun(page, dagId);
  await expect(page.getByTestId('gnode-work_alpha')).toBeVisible();
  await expect(page.getByTestId('gnode-work_epsilon')).toBeVisible();
  await expect(page.getByTestId('gnode-merge')).toHaveAttribute('data-status', 'completed', { timeout: 30_000 });
  await expect(page.getByTestId('run-state')).toHaveText('completed');
});
