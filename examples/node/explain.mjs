#!/usr/bin/env node
// Explain images with a compiled rlrp-onnx model from JavaScript: ONNX Runtime's Node.js binding and
// this file are all the consumer needs (no Python, no rlrp-onnx).
//
//   node explain.mjs MODEL INPUT.npy [--target K] [--relevance OUT.npy] [--heatmaps PREFIX]
//
// INPUT.npy holds the batch exactly as the model takes it (float32, e.g. N×3×224×224, already
// resized and normalised by your own pipeline). Prints the explained class and its score per sample;
// --relevance writes rlrp_relevance as .npy, --heatmaps writes PREFIX_<i>.png per sample (the channel
// sum, blue-white-red, symmetric bound at the 99.5th percentile of |R|: rlrp-onnx's heatmap).
// --target K explains class K for every sample (default: each sample's arg-max class). It needs a model
// compiled with `rlrp-onnx compile --target-input required`: onnxruntime-node does not feed an input that
// has a default value, as rlrp_target has in the default form, and would explain the arg-max instead.

import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { deflateSync } from 'node:zlib';
import * as ort from 'onnxruntime-node';

const TARGET = 'rlrp_target';
const PERCENTILE = 99.5;

class UsageError extends Error {}

function readNpy(path) {
  const bytes = readFileSync(path);
  const magic = '\x93NUMPY';
  if (bytes.length < 10 || bytes.toString('latin1', 0, 6) !== magic) {
    throw new UsageError(`${path}: not a .npy file`);
  }
  const wide = bytes[6] >= 2;
  const headerLength = wide ? bytes.readUInt32LE(8) : bytes.readUInt16LE(8);
  const start = (wide ? 12 : 10) + headerLength;
  const header = bytes.toString('latin1', wide ? 12 : 10, start);
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr !== '<f4' || fortran || shapeText === undefined) {
    throw new UsageError(`${path}: expected a C-order float32 array (descr '<f4'), got ${header.trim()}`);
  }
  const shape = shapeText.split(',').map((s) => s.trim()).filter((s) => s).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  if (bytes.length - start !== 4 * count) {
    throw new UsageError(`${path}: ${bytes.length - start} data bytes for shape (${shape}), expected ${4 * count}`);
  }
  const data = new Float32Array(count);
  Buffer.from(data.buffer).set(bytes.subarray(start));
  return { data, shape };
}

function writeNpy(path, data, shape) {
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(', ');
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${dims}), }`;
  header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n';
  const prefix = Buffer.alloc(10);
  prefix.write('\x93NUMPY', 0, 'latin1');
  prefix[6] = 1;
  prefix.writeUInt16LE(header.length, 8);
  writeFileSync(path, Buffer.concat([prefix, Buffer.from(header, 'latin1'), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type, data) {
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

function writePng(path, rgb, width, height) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bits per channel
  header[9] = 2; // RGB
  const rows = Buffer.alloc(height * (1 + 3 * width)); // each row: filter type 0, then the pixels
  for (let y = 0; y < height; y++) {
    rows.set(rgb.subarray(3 * width * y, 3 * width * (y + 1)), y * (1 + 3 * width) + 1);
  }
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  writeFileSync(path, Buffer.concat([signature, pngChunk('IHDR', header), pngChunk('IDAT', deflateSync(rows)),
    pngChunk('IEND', Buffer.alloc(0))]));
}

// numpy's percentile (linear interpolation) of sorted values.
function percentile(sorted, p) {
  const position = (p / 100) * (sorted.length - 1);
  const low = Math.floor(position);
  const high = Math.min(low + 1, sorted.length - 1);
  const t = position - low;
  const step = sorted[high] - sorted[low];
  return t >= 0.5 ? sorted[high] - step * (1 - t) : sorted[low] + step * t;
}

// One sample's relevance (C×H×W or H×W×C values) as blue-white-red RGB pixels.
function heatmap(values, layout, channels, height, width) {
  const map = new Float64Array(height * width);
  for (let c = 0; c < channels; c++) {
    for (let i = 0; i < height * width; i++) {
      map[i] += layout === 'NCHW' ? values[c * height * width + i] : values[i * channels + c];
    }
  }
  const magnitudes = Float64Array.from(map.filter(Number.isFinite), Math.abs).sort();
  let bound = magnitudes.length ? percentile(magnitudes, PERCENTILE) : 0;
  if (bound <= 0 && magnitudes.length) bound = magnitudes[magnitudes.length - 1];
  const rgb = new Uint8Array(3 * height * width);
  map.forEach((value, i) => {
    if (Number.isNaN(value)) return; // black
    const scaled = bound > 0 ? Math.min(1, Math.max(-1, value / bound)) : Math.sign(value);
    const positive = Math.max(scaled, 0);
    const negative = Math.max(-scaled, 0);
    rgb[3 * i] = Math.round(255 * (1 - negative));
    rgb[3 * i + 1] = Math.round(255 * (1 - positive - negative));
    rgb[3 * i + 2] = Math.round(255 * (1 - positive));
  });
  return rgb;
}

async function main() {
  const { values: options, positionals } = parseArgs({
    allowPositionals: true,
    options: { target: { type: 'string' }, relevance: { type: 'string' }, heatmaps: { type: 'string' } },
  });
  if (positionals.length !== 2) {
    throw new UsageError('usage: node explain.mjs MODEL INPUT.npy [--target K] [--relevance OUT.npy] [--heatmaps PREFIX]');
  }
  const [modelPath, inputPath] = positionals;
  if (options.target !== undefined && !/^-?\d+$/.test(options.target)) {
    throw new UsageError(`--target takes a whole number, got ${options.target}`);
  }
  const input = readNpy(inputPath);
  const session = await ort.InferenceSession.create(modelPath, { logSeverityLevel: 3 });
  if (!session.outputNames.includes('rlrp_relevance')) {
    throw new UsageError(`${modelPath}: no output rlrp_relevance; not a compiled explainer model (run rlrp-onnx compile)`);
  }
  const image = session.inputNames.find((name) => name !== TARGET);
  const feeds = { [image]: new ort.Tensor('float32', input.data, input.shape) };
  const batch = input.shape[0];
  if (session.inputNames.includes(TARGET)) {
    const target = BigInt(options.target ?? -1);
    feeds[TARGET] = new ort.Tensor('int64', new BigInt64Array(batch).fill(target), [batch]);
  } else if (options.target !== undefined) {
    throw new UsageError(`${modelPath}: its ${TARGET} has a default value, which onnxruntime-node does not let a `
      + 'caller override; compile the source model with `rlrp-onnx compile --target-input required`');
  }
  const outputs = await session.run(feeds);
  const relevance = outputs.rlrp_relevance;
  for (let n = 0; n < batch; n++) {
    console.log(`sample ${n}: class ${outputs.rlrp_class.data[n]} score ${outputs.rlrp_score.data[n]}`);
  }
  if (options.relevance) writeNpy(options.relevance, relevance.data, relevance.dims);
  if (options.heatmaps) {
    const [, a, b, c] = relevance.dims;
    const layout = a === 3 ? 'NCHW' : 'NHWC';
    if (relevance.dims.length !== 4 || (a !== 3 && c !== 3)) {
      throw new UsageError(`${modelPath}: relevance of shape (${relevance.dims}) is not an N,3,H,W or N,H,W,3 image`);
    }
    const [channels, height, width] = layout === 'NCHW' ? [a, b, c] : [c, a, b];
    const size = channels * height * width;
    for (let n = 0; n < batch; n++) {
      const rgb = heatmap(relevance.data.subarray(n * size, (n + 1) * size), layout, channels, height, width);
      writePng(`${options.heatmaps}_${n}.png`, rgb, width, height);
    }
  }
}

main().catch((error) => {
  // One line: the file or option at fault and what is wrong (ONNX Runtime's own messages included).
  console.error(`error: ${error instanceof UsageError ? error.message : String(error.message ?? error).split('\n')[0]}`);
  process.exit(1);
});
