// Builds the web client into dist/: a single minified bundle (app.<hash>.js),
// the stylesheet and index.html. Run with `npm run build` (or `npm run build -- --watch`).
import { build, context } from 'esbuild';
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(fileURLToPath(import.meta.url));
const src = join(root, 'src');
const dist = join(root, 'dist');
const watch = process.argv.includes('--watch');

const options = {
  entryPoints: [join(src, 'main.ts')],
  bundle: true,
  format: 'esm',
  target: ['es2020'],
  minify: !watch,
  sourcemap: true,
  write: false,
  outfile: join(dist, 'app.js'),
  legalComments: 'linked',
  logLevel: 'warning',
};

function hash(bytes) {
  return createHash('sha256').update(bytes).digest('hex').slice(0, 10);
}

async function emit(result) {
  // Write the new files first, then drop stale ones, so a server reading dist/
  // never sees it empty.
  await mkdir(dist, { recursive: true });
  const before = new Set(await readdir(dist));
  const files = {};
  for (const f of result.outputFiles) {
    files[f.path.slice(dist.length + 1)] = f.contents;
  }
  const js = files['app.js'];
  const css = await readFile(join(src, 'style.css'));
  const jsName = `app.${hash(js)}.js`;
  const cssName = `style.${hash(css)}.css`;
  const jsText = Buffer.from(js).toString('utf8').replace('sourceMappingURL=app.js.map', `sourceMappingURL=${jsName}.map`);
  await writeFile(join(dist, jsName), jsText);
  if (files['app.js.map']) await writeFile(join(dist, `${jsName}.map`), files['app.js.map']);
  if (files['app.js.LEGAL.txt']) await writeFile(join(dist, 'LICENSES.txt'), files['app.js.LEGAL.txt']);
  await writeFile(join(dist, cssName), css);
  const html = (await readFile(join(src, 'index.html'), 'utf8'))
    .replace('%APP_JS%', `/${jsName}`)
    .replace('%STYLE_CSS%', `/${cssName}`);
  await writeFile(join(dist, 'index.html'), html);
  const names = [jsName, cssName, 'index.html'];
  if (files['app.js.map']) names.push(`${jsName}.map`);
  if (files['app.js.LEGAL.txt']) names.push('LICENSES.txt');
  for (const old of before) {
    if (!names.includes(old)) await rm(join(dist, old), { recursive: true, force: true });
  }
  console.log(`built web/dist: ${names.join(', ')} (app ${(js.length / 1024).toFixed(1)} KiB)`);
}

if (watch) {
  const ctx = await context({
    ...options,
    plugins: [{ name: 'emit', setup(b) { b.onEnd((r) => r.errors.length === 0 && emit(r)); } }],
  });
  await ctx.watch();
  console.log('watching web/src …');
} else {
  await emit(await build(options));
}
