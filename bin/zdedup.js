#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript in dist/ (run `npm run build` after changing src/).
import { main } from '../dist/src/frontends/cli/main.js';
main(process.argv.slice(2)).then((code) => { if (typeof code === 'number') process.exitCode = code; });
