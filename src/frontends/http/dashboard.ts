/**
 * The dashboard's static files, read once when the HTTP server is built and served from memory:
 *
 *   /                          assets/dashboard.html
 *   /assets/dashboard.js       assets/dashboard.js (the page's script, an ES module)
 *   /assets/dashboard.css      assets/dashboard.css
 *   /assets/stat-model.js      the compiled stat-model.ts beside this file (what each stat means)
 *   /assets/uPlot.iife.min.js  node_modules/uplot/dist (the chart library, MIT)
 *   /assets/uPlot.min.css      node_modules/uplot/dist
 *
 * Nothing is fetched from the internet; the page's Content-Security-Policy (server.ts) forbids it.
 * The html/js/css are plain files kept in src/frontends/http/assets/ (tsc does not copy them, and
 * the compiler's Node typings must not be mixed with the DOM's); they are found next to this
 * compiled file if someone copied them there, else in the source tree this dist/ was built from.
 * Missing files are not fatal: /stats and /metrics keep working and the dashboard routes answer
 * 503 saying what is missing.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export interface Asset {
  type: string;
  body: Buffer;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

function typeOf(path: string): string {
  return TYPES[path.slice(path.lastIndexOf('.'))] ?? 'application/octet-stream';
}

/** The folder holding dashboard.html: beside the compiled module, else in the source tree. */
function assetsDir(): string {
  for (const rel of ['./assets/', '../../../../src/frontends/http/assets/']) {
    const dir = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(`${dir}dashboard.html`)) return dir;
  }
  throw new Error('dashboard assets not found (src/frontends/http/assets/)');
}

/** Every dashboard route and its file, or the reason they could not be read. */
export function loadDashboardAssets(): { assets: Map<string, Asset>; error: string | null } {
  const assets = new Map<string, Asset>();
  try {
    const dir = assetsDir();
    const require = createRequire(import.meta.url);
    const files: [string, string][] = [
      ['/', `${dir}dashboard.html`],
      ['/assets/dashboard.js', `${dir}dashboard.js`],
      ['/assets/dashboard.css', `${dir}dashboard.css`],
      ['/assets/stat-model.js', fileURLToPath(new URL('./stat-model.js', import.meta.url))],
      ['/assets/uPlot.iife.min.js', require.resolve('uplot/dist/uPlot.iife.min.js')],
      ['/assets/uPlot.min.css', require.resolve('uplot/dist/uPlot.min.css')],
    ];
    for (const [route, file] of files) {
      let body = readFileSync(file);
      // The browser would ask for the source map of our compiled module: drop the reference.
      if (route === '/assets/stat-model.js') body = Buffer.from(body.toString('utf8').replace(/\n\/\/# sourceMappingURL=.*\s*$/, '\n'));
      assets.set(route, { type: typeOf(file), body });
    }
    return { assets, error: null };
  } catch (e) {
    return { assets: new Map(), error: (e as Error).message };
  }
}
