import { request, type FullConfig } from '@playwright/test';

/** Where the signed-in browser state (the session cookie) is kept for every test. */
export const STATE = `${__dirname}/.auth/state.json`;

/** The admin token the suite's server runs with (the Makefile exports it). */
export const TOKEN = process.env.DAGSTREAM_TOKEN ?? '';

/** Signs in once through the one-click link, as a user would, and saves the cookie. */
export default async function globalSetup(config: FullConfig) {
  if (!TOKEN) throw new Error('DAGSTREAM_TOKEN is not set: run the suite with `make e2e`');
  const baseURL = config.projects[0].use.baseURL as string;
  const context = await request.newContext({ baseURL });
  const response = await context.get(`/login?token=${TOKEN}`, { maxRedirects: 0 });
  if (response.status() !== 303) throw new Error(`sign-in failed: ${response.status()}`);
  await context.storageState({ path: STATE });
  await context.dispose();
}
