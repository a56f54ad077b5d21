// Build the roost-recipe-v1 record sets with @atproto/repo and print, as one
// JSON object on stdout, everything the repo fixtures record about them.
//
// Usage (from the folder holding node_modules, see benchmarks/peers.py):
//   node gen_fixtures.mjs --n 0,10,1000,10000 [--mutate 10000] [--all-records 10]
//
// Driven by benchmarks/gen_repo_fixtures.py, which cross-checks the result
// with Python (roost, atmst, coincurve) and writes tests/fixtures/repo/*.json.

import { Secp256k1Keypair } from '@atproto/crypto'
import {
  MemoryBlockstore,
  Repo,
  WriteOpAction,
  cidForRecord,
  concatBytesAsync,
  getFullRepo,
  readCarWithRoot,
  verifyRepoCar,
} from '@atproto/repo'
import {
  FIXTURE_DID,
  FIXTURE_KEY_HEX,
  FIXTURE_REV,
  RECIPE,
  editedRecord,
  isDeleted,
  isUpdated,
  packageVersion,
  recipeCollection,
  recipePath,
  recipeRecord,
  recipeRkey,
  sampleIndices,
} from './recipe.mjs'

function parseArgs(argv) {
  const opts = { n: [0, 10], mutate: [], allRecords: 10 }
  for (let k = 0; k < argv.length; k += 2) {
    const [flag, value] = [argv[k], argv[k + 1]]
    const ints = () => value.split(',').filter(Boolean).map(Number)
    if (flag === '--n') opts.n = ints()
    else if (flag === '--mutate') opts.mutate = ints()
    else if (flag === '--all-records') opts.allRecords = Number(value)
    else throw new Error(`unknown argument ${flag}`)
  }
  return opts
}

const hex = (bytes) => Buffer.from(bytes).toString('hex')

async function buildSet(n, keypair, opts) {
  const writes = []
  for (let i = 0; i < n; i++) {
    writes.push({
      action: WriteOpAction.Create,
      collection: recipeCollection(i),
      rkey: recipeRkey(i),
      record: await recipeRecord(i),
    })
  }
  const storage = new MemoryBlockstore()
  const commitData = await Repo.formatInitCommit(storage, FIXTURE_DID, keypair, writes, FIXTURE_REV)
  const repo = await Repo.createFromCommit(storage, commitData)

  const car = await concatBytesAsync(getFullRepo(storage, repo.cid))
  const parsed = await readCarWithRoot(car)
  // sanity: the reference verifier accepts its own export, signature included
  const verified = await verifyRepoCar(car, FIXTURE_DID, keypair.did())
  if (verified.creates.length !== n) {
    throw new Error(`verify saw ${verified.creates.length} records`)
  }

  const out = {
    n,
    data_cid: repo.commit.data.toString(),
    commit: {
      did: repo.commit.did,
      rev: repo.commit.rev,
      version: repo.commit.version,
      cid: repo.cid.toString(),
      sig_hex: hex(repo.commit.sig),
    },
    block_count: parsed.blocks.size,
    car_size: car.length,
    sample_records: [],
  }
  for (const i of sampleIndices(n)) {
    const cid = await repo.data.get(recipePath(i))
    out.sample_records.push([recipePath(i), cid.toString()])
  }
  if (n <= opts.allRecords) {
    out.records = []
    for (let i = 0; i < n; i++) {
      const cid = await repo.data.get(recipePath(i))
      const record = await recipeRecord(i)
      out.records.push({ index: i, path: recipePath(i), cid: cid.toString(), record })
    }
  }

  if (opts.mutate.includes(n)) {
    let data = repo.data
    let deleted = 0
    for (let i = 0; i < n; i++) {
      if (!isDeleted(i)) continue
      data = await data.delete(recipePath(i))
      deleted++
    }
    const afterDeletes = (await data.getPointer()).toString()
    let updated = 0
    for (let i = 0; i < n; i++) {
      if (!isUpdated(i)) continue
      data = await data.update(recipePath(i), await cidForRecord(editedRecord(i)))
      updated++
    }
    const afterUpdates = (await data.getPointer()).toString()
    // the spread-out sample plus indices hit by the mutations (7: deleted,
    // 11 and 22: updated, 77: deleted, not updated)
    const picked = new Set([...sampleIndices(n), 7, 11, 14, 22, 77, 154].filter((i) => i < n))
    const sample = []
    for (const i of [...picked].sort((a, b) => a - b)) {
      const cid = await data.get(recipePath(i))
      sample.push([recipePath(i), cid ? cid.toString() : null])
    }
    out.mutations = {
      delete_rule: 'delete every record with i % 7 == 0',
      update_rule:
        'then update every remaining record with i % 11 == 0 (so not i % 77 == 0) ' +
        'to {"$type":"app.bsky.feed.post","text":"edited <i>",' +
        '"createdAt":"2024-01-01T00:00:00.000Z"} at the same path',
      deleted_count: deleted,
      data_cid_after_deletes: afterDeletes,
      updated_count: updated,
      data_cid_after_updates: afterUpdates,
      sample_records_after_updates: sample,
    }
  }
  return out
}

async function main() {
  const opts = parseArgs(process.argv.slice(2))
  const keypair = await Secp256k1Keypair.import(FIXTURE_KEY_HEX)
  const result = {
    generator: `@atproto/repo ${packageVersion('@atproto/repo')}`,
    crypto: `@atproto/crypto ${packageVersion('@atproto/crypto')}`,
    node: process.version,
    recipe: RECIPE,
    signing_key_hex: FIXTURE_KEY_HEX,
    signing_did_key: keypair.did(),
    sets: [],
  }
  for (const n of opts.n) result.sets.push(await buildSet(n, keypair, opts))
  process.stdout.write(JSON.stringify(result) + '\n')
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`)
  process.exit(1)
})
