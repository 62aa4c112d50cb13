// Runs an exported TF.js graph model in Node with @tensorflow/tfjs, for the exporter's parity check.
//
//   node export/tfjs_predict.mjs --model OUT/model/model.json --images x.f32 --shape N,H,W,3 \
//        --out y.f32 [--backend wasm|cpu] [--batch 8]
//
// Reads raw little-endian float32 images (RGB 0-255, NHWC), writes raw float32 outputs one after
// the other ([N, width] each, in the model's output order: embedding, logits, probabilities) and
// prints {"backend", "outputs": [[name, width], ...], "ms_per_image"} as JSON.
// The plain @tensorflow/tfjs package has no file:// loader in Node (that is tfjs-node, a native
// build we avoid), so model.json and its shards are read here and handed over in memory.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    images: { type: 'string' },
    shape: { type: 'string' },
    out: { type: 'string' },
    backend: { type: 'string', default: 'wasm' },
    batch: { type: 'string', default: '8' },
  },
});
for (const key of ['model', 'images', 'shape', 'out']) {
  if (!args[key]) throw new Error(`missing --${key}; usage: see the header of ${process.argv[1]}`);
}

async function loadModel(modelJsonPath) {
  const dir = path.dirname(modelJsonPath);
  const modelJson = JSON.parse(fs.readFileSync(modelJsonPath, 'utf8'));
  return tf.loadGraphModel({
    load: () =>
      tf.io.getModelArtifactsForJSON(modelJson, async (manifest) => {
        const specs = tf.io.getWeightSpecs(manifest);
        const buffers = manifest.flatMap((group) => group.paths.map((p) => fs.readFileSync(path.join(dir, p))));
        return [specs, tf.io.concatenateArrayBuffers(buffers.map((b) => new Uint8Array(b).buffer))];
      }),
  });
}

async function main() {
  if (args.backend === 'wasm') {
    // Node loads the .wasm binaries from the package folder (file paths, not URLs).
    const require = createRequire(import.meta.url);
    setWasmPaths(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm')) + '/');
  }
  if (!(await tf.setBackend(args.backend))) throw new Error(`TF.js backend ${args.backend} failed to start`);
  await tf.ready();
  const shape = args.shape.split(',').map(Number);
  const raw = fs.readFileSync(args.images);
  const images = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  if (images.length !== shape.reduce((a, b) => a * b)) throw new Error(`--images holds ${images.length} floats, --shape says ${shape}`);

  const model = await loadModel(args.model);
  const [n, h, w, c] = shape;
  const batch = Number(args.batch);
  const parts = {};  // output name -> [Float32Array per batch]
  let ms = 0;
  for (let start = 0; start < n; start += batch) {
    const size = Math.min(batch, n - start);
    const x = tf.tensor4d(images.subarray(start * h * w * c, (start + size) * h * w * c), [size, h, w, c]);
    const t0 = performance.now();
    const out = model.predict(x);  // {embedding, logits, probabilities}: names, see tfjs.py
    const names = Object.keys(out).sort();
    const values = await Promise.all(names.map((k) => out[k].data()));
    ms += performance.now() - t0;
    names.forEach((k, i) => (parts[k] ??= []).push(values[i]));
    tf.dispose([x, ...Object.values(out)]);
  }
  const outputs = Object.keys(parts).sort().map((k) => [k, parts[k].reduce((a, b) => a + b.length, 0) / n]);
  const all = new Float32Array(outputs.reduce((a, [, width]) => a + width * n, 0));
  let offset = 0;
  for (const [k] of outputs) {
    for (const part of parts[k]) {
      all.set(part, offset);
      offset += part.length;
    }
  }
  fs.writeFileSync(args.out, Buffer.from(all.buffer));
  console.log(JSON.stringify({ backend: tf.getBackend(), outputs, ms_per_image: ms / n }));
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
