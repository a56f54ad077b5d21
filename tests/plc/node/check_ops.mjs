// Checks did:plc ops built by roost with the reference library (@did-plc/lib).
//
// stdin: {"cases": [...]} where a case is
//   {name, did, ops: [op...], signers: [didKey...], nullifiedAt?: {index, cids},
//    chain: [index...], data: {...} | null, expectInvalid?: bool}
// `ops` are submitted in order through assureValidNextOp (as a directory would);
// `chain` names the ops of the resulting valid chain for validateOperationLog.
// stdout: {"results": [{name, ok, errors: [...]}]}
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const plc = require('@did-plc/lib')

const readStdin = async () => {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return Buffer.concat(chunks).toString('utf8')
}

const cidOf = async (op) => (await plc.getLastOpWithCid([op])).cid

const normalizedKeys = (op) => plc.normalizeOp(op).rotationKeys

const checkCase = async (c) => {
  const errors = []
  const expect = (cond, msg) => {
    if (!cond) errors.push(msg)
  }
  const genesis = c.ops[0]
  const derived = await plc.didForCreateOp(genesis)
  expect(derived === c.did, `didForCreateOp gave ${derived}, roost ${c.did}`)

  // CIDs as the reference computes them.
  const cids = []
  for (const [i, op] of c.ops.entries()) {
    const cid = await cidOf(op)
    cids.push(cid)
    expect(cid.toString() === c.cids[i], `op ${i}: CID ${cid} vs roost ${c.cids[i]}`)
  }

  // Submit the ops in order, as the directory does.
  const indexed = []
  const start = Date.now() - 60_000
  for (const [i, op] of c.ops.entries()) {
    try {
      const { nullified } = await plc.assureValidNextOp(c.did, indexed.filter((o) => !o.nullified), op)
      const gone = new Set(nullified.map((x) => x.toString()))
      for (const o of indexed) if (gone.has(o.cid.toString())) o.nullified = true
      const expected = (c.nullified && c.nullified[i]) || []
      expect(
        JSON.stringify([...gone].sort()) === JSON.stringify([...expected].sort()),
        `op ${i}: reference nullified ${[...gone]} vs roost ${expected}`,
      )
      indexed.push({ did: c.did, operation: op, cid: cids[i], nullified: false, createdAt: new Date(start + i * 1000) })
    } catch (err) {
      errors.push(`op ${i}: assureValidNextOp: ${err.message.slice(0, 300)}`)
      break
    }
  }

  // Signer of each op, by the rotation keys it must be checked against.
  for (const [i, op] of c.ops.entries()) {
    if (!c.signers || !c.signers[i]) continue
    const prevIndex = op.prev === null ? i : c.ops.findIndex((o, j) => cids[j].toString() === op.prev)
    try {
      const signer = await plc.assureValidSig(normalizedKeys(c.ops[prevIndex]), op)
      expect(signer === c.signers[i], `op ${i}: signed by ${signer}, roost says ${c.signers[i]}`)
    } catch (err) {
      errors.push(`op ${i}: assureValidSig: ${err.message.slice(0, 300)}`)
    }
  }

  // The final valid chain, and the state it gives.
  if (c.chain) {
    try {
      const data = await plc.validateOperationLog(c.did, c.chain.map((i) => c.ops[i]))
      expect(
        JSON.stringify(sortKeys(data)) === JSON.stringify(sortKeys(c.data)),
        `state ${JSON.stringify(data)} vs roost ${JSON.stringify(c.data)}`,
      )
    } catch (err) {
      errors.push(`validateOperationLog: ${err.message.slice(0, 300)}`)
    }
  }
  return errors
}

const sortKeys = (value) => {
  if (Array.isArray(value)) return value.map(sortKeys)
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys(value[k])]))
  }
  return value
}

const main = async () => {
  const input = JSON.parse(await readStdin())
  const results = []
  for (const c of input.cases) {
    let errors
    try {
      errors = await checkCase(c)
    } catch (err) {
      errors = [`crashed: ${err.stack}`]
    }
    results.push({ name: c.name, ok: errors.length === 0, errors })
  }
  process.stdout.write(JSON.stringify({ results }))
}

main().catch((err) => {
  process.stderr.write(String(err.stack || err))
  process.exit(1)
})
