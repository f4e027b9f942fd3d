// The dashboard's build: web/ → dist/web/, served by nimbusd under /ui/ (src/api/dashboard).
import { defineConfig } from 'vite';
import preact from '@preact/preset-vite';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));

export default defineConfig({
  root: here,
  base: '/ui/',
  plugins: [preact()],
  logLevel: 'warn',
  build: {
    outDir: fileURLToPath(new URL('../dist/web', import.meta.url)),
    emptyOutDir: true,
    // hashed names under assets/ are what the server marks immutable
    assetsDir: 'assets',
    // the polyfill would be an inline script, which the Content-Security-Policy forbids
    modulePreload: { polyfill: false },
    sourcemap: true,
    target: 'es2022',
  },
});
