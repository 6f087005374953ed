import { defineConfig } from '@playwright/test';

// The server is started by `cargo leptos end-to-end` (see the Makefile) on 127.0.0.1:3000.
// Playwright's own browser download does not work here: we drive Debian's Chromium.
export default defineConfig({
  testDir: './tests',
  // Signs in once; every test starts signed in as the admin (see global-setup.ts).
  globalSetup: require.resolve('./global-setup'),
  timeout: 90_000,
  expect: { timeout: 15_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [['list']],
  use: {
    baseURL: process.env.DAGSTREAM_URL ?? 'http://127.0.0.1:3000',
    storageState: `${__dirname}/.auth/state.json`,
    launchOptions: {
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    },
  },
});
