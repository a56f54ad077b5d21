// The deterministic record recipe "roost-recipe-v1", JavaScript side.
//
// Twin of tests/roost/repo_recipes.py (read its docstring for the rules);
// both must produce the same paths and the same record bytes. Change them
// together and regenerate the fixtures (python benchmarks/gen_repo_fixtures.py).

import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { cidForRecord } from '@atproto/repo'

export const RECIPE = 'roost-recipe-v1'
export const COLLECTIONS = ['app.bsky.feed.post', 'app.bsky.feed.like', 'app.bsky.graph.follow']
// did:plc: + 24 chars of [a-z2-7]
export const FIXTURE_DID = 'did:plc:fixture22222222222222222'
// tidString(1_710_000_000_000_000, 0)
export const FIXTURE_REV = '3knblnd3s2222'
// sha256("roost fixture key")
export const FIXTURE_KEY_HEX = '6b296a2e2255f18046fe3a48522afda61b9a58ba29973a931fa23a1b16f806ee'
export const BASE_TIMESTAMP_US = 1_700_000_000_000_000n
export const BASE_CREATED_AT_S = 1_700_000_000
export const DELETE_EVERY = 7
export const UPDATE_EVERY = 11

const S32 = '234567abcdefghijklmnopqrstuvwxyz'

// (timestamp_us << 10) | clock_id as 13 sortable-base32 chars, most significant first.
export function tidString(timestampUs, clockId) {
  const value = (BigInt(timestampUs) << 10n) | BigInt(clockId)
  let out = ''
  for (let k = 12; k >= 0; k--) {
    out += S32[Number((value >> BigInt(5 * k)) & 31n)]
  }
  return out
}

function s32Int(value, width) {
  let out = ''
  let v = BigInt(value)
  while (v > 0n) {
    out = S32[Number(v & 31n)] + out
    v >>= 5n
  }
  return out.padStart(width, '2')
}

export const recipeRkey = (i) => tidString(BASE_TIMESTAMP_US + BigInt(i) * 1000n, i % 32)
export const recipeCollection = (i) => COLLECTIONS[i % 3]
export const recipePath = (i) => `${recipeCollection(i)}/${recipeRkey(i)}`
// "YYYY-MM-DDTHH:MM:SS.000Z"
export const createdAt = (i) => new Date((BASE_CREATED_AT_S + i) * 1000).toISOString()
export const followDid = (i) => 'did:plc:follow' + s32Int(i, 18)

const post = (i) => ({
  $type: 'app.bsky.feed.post',
  text: `post number ${i}`,
  createdAt: createdAt(i),
})

// The record value of index i (independent of n).
export async function recipeRecord(i) {
  switch (i % 3) {
    case 0:
      return post(i)
    case 1:
      return {
        $type: 'app.bsky.feed.like',
        subject: {
          uri: `at://${FIXTURE_DID}/${recipePath(i - 1)}`,
          cid: (await cidForRecord(post(i - 1))).toString(),
        },
        createdAt: createdAt(i),
      }
    default:
      return {
        $type: 'app.bsky.graph.follow',
        subject: followDid(i),
        createdAt: createdAt(i),
      }
  }
}

export const editedRecord = (i) => ({
  $type: 'app.bsky.feed.post',
  text: `edited ${i}`,
  createdAt: '2024-01-01T00:00:00.000Z',
})

export const isDeleted = (i) => i % DELETE_EVERY === 0
export const isUpdated = (i) => i % UPDATE_EVERY === 0 && !isDeleted(i)

// Spread-out sample of indices (first, last and evenly between), at most `count`.
export function sampleIndices(n, count = 20) {
  if (n <= count) return [...Array(n).keys()]
  const out = new Set()
  for (let k = 0; k < count; k++) out.add(Math.round((k * (n - 1)) / (count - 1)))
  return [...out].sort((a, b) => a - b)
}

// VmHWM (peak resident set of this process's own address space) in MB.
// process.resourceUsage().maxRSS is not used first: on Linux it keeps the
// parent's high-water mark across exec, so a child started by a big parent
// would report the parent's figure.
export async function peakRssMb() {
  try {
    const status = readFileSync('/proc/self/status', 'utf8')
    const m = status.match(/^VmHWM:\s+(\d+)\s+kB/m)
    if (m) return Number(m[1]) / 1024
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS / 1024
}

// Installed version of an npm package (works when its "exports" hide package.json).
export function packageVersion(name) {
  const require = createRequire(import.meta.url)
  let dir = dirname(require.resolve(name))
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
      if (pkg.name === name) return pkg.version
    } catch {
      // keep looking upwards
    }
    const up = dirname(dir)
    if (up === dir) return 'unknown'
    dir = up
  }
}
