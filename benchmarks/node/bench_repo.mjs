// The @atproto/repo side of roost's repo benchmark (benchmarks/repo_peers.py).
//
// One phase per process, so each reports its own peak RSS:
//   node bench_repo.mjs build   --n N --car OUT.car   build n recipe records + one signed
//                                                     commit in memory (timed), then export
//                                                     the whole repo as a CAR (timed), and
//                                                     write it to OUT.car (untimed)
//   node bench_repo.mjs export  --n N --car IN.car    load the CAR into memory (untimed), then
//                                                     export the whole repo again (timed)
//   node bench_repo.mjs verify  --n N --car IN.car    parse the CAR (every block's CID is
//                                                     checked), walk the MST, require every
//                                                     record block, verify the commit signature
//   node bench_repo.mjs commits --n N --car IN.car [--count 1000]
//                                                     load the CAR into memory (untimed), then
//                                                     make `count` commits of one created
//                                                     record each, signed (timed)
// Prints one JSON object: times in seconds, peak RSS in MB (VmHWM).

import { readFileSync, writeFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { Secp256k1Keypair } from '@atproto/crypto'
import {
  MemoryBlockstore,
  Repo,
  WriteOpAction,
  concatBytesAsync,
  getFullRepo,
  readCarWithRoot,
  verifyRepoCar,
} from '@atproto/repo'
import {
  FIXTURE_DID,
  FIXTURE_KEY_HEX,
  FIXTURE_REV,
  packageVersion,
  peakRssMb,
  recipeCollection,
  recipeRecord,
  recipeRkey,
} from './recipe.mjs'

const peer = `@atproto/repo ${packageVersion('@atproto/repo')}`

function parseArgs(argv) {
  const opts = { phase: argv[0], n: 1000, car: null, count: 1000 }
  for (let k = 1; k < argv.length; k += 2) {
    const [flag, value] = [argv[k], argv[k + 1]]
    if (flag === '--n') opts.n = Number(value)
    else if (flag === '--car') opts.car = value
    else if (flag === '--count') opts.count = Number(value)
    else throw new Error(`unknown argument ${flag}`)
  }
  if (!['build', 'export', 'verify', 'commits'].includes(opts.phase)) {
    const phases = 'build|export|verify|commits'
    throw new Error(`usage: bench_repo.mjs ${phases} --n N --car FILE [--count K]`)
  }
  if (!opts.car) throw new Error('--car is required')
  return opts
}

async function createOps(from, to) {
  const ops = []
  for (let i = from; i < to; i++) {
    ops.push({
      action: WriteOpAction.Create,
      collection: recipeCollection(i),
      rkey: recipeRkey(i),
      record: await recipeRecord(i),
    })
  }
  return ops
}

const seconds = (t0) => (performance.now() - t0) / 1000
const round = (x, digits = 4) => Number(x.toFixed(digits))

async function build(opts, keypair) {
  const writes = await createOps(0, opts.n) // the record values are inputs, not timed
  const rssBefore = await peakRssMb()

  let t0 = performance.now()
  const storage = new MemoryBlockstore()
  const commit = await Repo.formatInitCommit(storage, FIXTURE_DID, keypair, writes, FIXTURE_REV)
  const repo = await Repo.createFromCommit(storage, commit)
  const buildS = seconds(t0)
  const buildRss = await peakRssMb()

  t0 = performance.now()
  const car = await concatBytesAsync(getFullRepo(storage, repo.cid))
  const exportS = seconds(t0)
  const exportRss = await peakRssMb()

  writeFileSync(opts.car, car)
  return {
    build_s: round(buildS),
    export_s: round(exportS),
    car_bytes: car.length,
    data_cid: repo.commit.data.toString(),
    commit_cid: repo.cid.toString(),
    rss_before_build_mb: round(rssBefore, 1),
    build_peak_rss_mb: round(buildRss, 1),
    export_peak_rss_mb: round(exportRss, 1),
  }
}

async function loadCar(path) {
  const car = await readCarWithRoot(new Uint8Array(readFileSync(path)))
  const storage = new MemoryBlockstore(car.blocks)
  return { storage, root: car.root }
}

async function exportLoaded(opts) {
  const { storage, root } = await loadCar(opts.car)
  const rssLoaded = await peakRssMb()
  const t0 = performance.now()
  const car = await concatBytesAsync(getFullRepo(storage, root))
  const exportS = seconds(t0)
  return {
    export_s: round(exportS),
    car_bytes: car.length,
    loaded_peak_rss_mb: round(rssLoaded, 1),
    export_peak_rss_mb: round(await peakRssMb(), 1),
  }
}

async function verify(opts, keypair) {
  const bytes = new Uint8Array(readFileSync(opts.car))
  const t0 = performance.now()
  const verified = await verifyRepoCar(bytes, FIXTURE_DID, keypair.did())
  const verifyS = seconds(t0)
  if (verified.creates.length !== opts.n) {
    throw new Error(`verified ${verified.creates.length} records, expected ${opts.n}`)
  }
  return {
    verify_s: round(verifyS),
    records: verified.creates.length,
    car_bytes: bytes.length,
    commit_cid: verified.commit.cid.toString(),
    verify_peak_rss_mb: round(await peakRssMb(), 1),
  }
}

async function commits(opts, keypair) {
  const { storage, root } = await loadCar(opts.car)
  let repo = await Repo.load(storage, root)
  const ops = await createOps(opts.n, opts.n + opts.count)
  const rssLoaded = await peakRssMb()

  const t0 = performance.now()
  for (const op of ops) {
    repo = await repo.applyWrites(op, keypair)
  }
  const commitsS = seconds(t0)
  return {
    commits_s: round(commitsS),
    commits: ops.length,
    commit_ms: round((commitsS * 1000) / ops.length, 3),
    data_cid_after: repo.commit.data.toString(),
    loaded_peak_rss_mb: round(rssLoaded, 1),
    commits_peak_rss_mb: round(await peakRssMb(), 1),
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2))
  const keypair = await Secp256k1Keypair.import(FIXTURE_KEY_HEX)
  const phases = { build, export: exportLoaded, verify, commits }
  const result = await phases[opts.phase](opts, keypair)
  process.stdout.write(
    JSON.stringify({ peer, node: process.version, phase: opts.phase, n: opts.n, ...result }) + '\n',
  )
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`)
  process.exit(1)
})
