import { expect, test } from '@playwright/test';

// These tests start signed out: a fresh browser context without the suite's session cookie.
test.use({ storageState: { cookies: [], origins: [] } });

test('a signed-out browser gets the sign-in form; a wrong token is refused; the right one signs in', async ({ page }) => {
  const response = await page.goto('/');
  expect(response?.status()).toBe(401);
  await expect(page.getByTestId('login')).toBeVisible();
  await page.getByTestId('token').fill('not-the-token');
  await page.getByTestId('login').getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByTestId('login-error')).toContainText('not valid');

  await page.getByTestId('token').fill(process.env.DAGSTREAM_TOKEN ?? '');
  await page.getByTestId('login').getByRole('button', { name: 'Sign in' }).click();
  await expect(page).toHaveURL(/\/$/);
  await expect(page.getByTestId('signed-in')).toHaveText('admin');
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === 'dagstream_session');
  expect(session?.httpOnly).toBe(true);
  expect(session?.sameSite).toBe('Strict');

  await page.getByTestId('sign-out').click();
  await expect(page.getByTestId('login')).toBeVisible();
  expect((await page.goto('/'))?.status()).toBe(401);
});

test('the one-click link signs in and takes the token out of the address bar', async ({ page }) => {
  await page.goto(`/login?token=${process.env.DAGSTREAM_TOKEN}`);
  await expect(page).toHaveURL(/\/$/);
  expect(page.url()).not.toContain('token');
  await expect(page.getByTestId('signed-in')).toHaveText('admin');
});
