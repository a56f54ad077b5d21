// Run the reference PDS (@atproto/pds) on 127.0.0.1 for benchmarks/pds.py.
//
// Configured entirely by the PDS_* environment variables the reference reads
// (see benchmarks/pds.py for the set it passes). PDS_PORT=0 picks a free port.
// Once it accepts connections it prints one line on stdout,
//     pds listening on http://127.0.0.1:PORT
// (the same ready line as roost's servers) and runs until SIGINT/SIGTERM,
// then shuts down cleanly and exits 0.

import { PDS, envToCfg, envToSecrets, readEnv } from '@atproto/pds'

const HOST = process.env.ROOST_BENCH_BIND_HOST || '127.0.0.1'

async function main() {
  const env = readEnv()
  const cfg = envToCfg(env)
  const secrets = envToSecrets(env)
  const pds = await PDS.create(cfg, secrets)

  // PDS.start() calls app.listen(port), which binds every interface; pin the
  // listen address to loopback while keeping the rest of start() as it is.
  const listen = pds.app.listen.bind(pds.app)
  pds.app.listen = (port, ...rest) => listen(port, HOST, ...rest)

  const server = await pds.start()
  const { port } = server.address()
  process.stdout.write(`pds listening on http://${HOST}:${port}\n`)

  let stopping = false
  const stop = async () => {
    if (stopping) process.exit(1) // a second signal: leave now
    stopping = true
    try {
      await pds.destroy()
    } catch (err) {
      process.stderr.write(`pds_server: shutdown error: ${err}\n`)
    }
    process.exit(0)
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
}

main().catch((err) => {
  process.stderr.write(`pds_server: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
})
