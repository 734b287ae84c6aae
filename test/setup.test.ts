// scripts/setup.sh runs each step only when its result is missing or stale: the TypeScript is
// compiled when a source changed since the last build that succeeded, and only then. Runs on
// a copy of the project (mtimes kept) whose node_modules/.bin/tsc counts its runs. Its lib/,
// mount/ and bench/ hold a few small sources instead of the real ones: what is checked is
// when setup.sh runs tsc, not what tsc makes of ckptfs (npm test compiles that itself), and
// five compilations of the whole project took most of this test's 24 s.

import { spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'
import { workdir } from './lib/restore'
import { repo } from './lib/targets'

t.test('setup.sh compiles the TypeScript only when it is stale, and never skips after a failed build', async (t) => {
  const copy = workdir(t, 'ckptfs-setup-')
  for (const p of ['scripts', 'addon', 'tsconfig.json', 'package.json']) {
    spawnSync('cp', ['-a', path.join(repo, p), path.join(copy, p)])
  }
  const sources: Record<string, string> = {
    'lib/value.ts': 'export const value: number = 1\n',
    'mount/mounts.ts': "import { value } from '../lib/value'\nexport const mounts = value + 1\n",
    'mount/cli.ts': "import { mounts } from './mounts'\nconsole.log(mounts)\n",
    'bench/run.ts': "import { value } from '../lib/value'\nconsole.log(value)\n",
  }
  for (const [file, text] of Object.entries(sources)) {
    fs.mkdirSync(path.join(copy, path.dirname(file)), { recursive: true })
    fs.writeFileSync(path.join(copy, file), text)
  }
  fs.rmSync(path.join(copy, 'dist'), { recursive: true, force: true })
  // node_modules: the real packages, but a tsc that writes a line to a log at each run.
  const log = path.join(copy, 'tsc-runs.log')
  const modules = path.join(copy, 'node_modules')
  fs.mkdirSync(path.join(modules, '.bin'), { recursive: true })
  for (const name of fs.readdirSync(path.join(repo, 'node_modules'))) {
    if (name !== '.bin') fs.symlinkSync(path.join(repo, 'node_modules', name), path.join(modules, name))
  }
  for (const name of fs.readdirSync(path.join(repo, 'node_modules', '.bin'))) {
    if (name !== 'tsc') fs.symlinkSync(fs.realpathSync(path.join(repo, 'node_modules', '.bin', name)), path.join(modules, '.bin', name))
  }
  fs.writeFileSync(path.join(modules, '.bin', 'tsc'), `#!/bin/sh\necho run >> ${log}\nexec env -u NODE_OPTIONS ${JSON.stringify(process.execPath)} ${path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc')} "$@"\n`, { mode: 0o755 })

  const runs = () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').filter(Boolean).length : 0)
  const setup = () => spawnSync('env', ['-u', 'NODE_OPTIONS', 'bash', path.join(copy, 'scripts', 'setup.sh')], { encoding: 'utf8', timeout: 600_000 })

  let r = setup()
  t.equal(r.status, 0, `first run builds: ${r.stderr}`)
  t.equal(runs(), 1, 'tsc ran')
  t.ok(fs.existsSync(path.join(copy, 'dist', 'mount', 'cli.js')), 'and made dist/')
  r = setup()
  t.equal(r.status, 0)
  t.equal(runs(), 1, 'nothing changed: tsc did not run again')

  const source = path.join(copy, 'mount', 'mounts.ts')
  const good = fs.readFileSync(source, 'utf8')
  fs.writeFileSync(source, good + '\nexport const broken: number = "not a number"\n')
  r = setup()
  t.not(r.status, 0, 'a type error fails the set-up')
  t.equal(runs(), 2)
  r = setup()
  t.not(r.status, 0, 'and fails it again: a failed build is not taken for a finished one')
  t.equal(runs(), 3)

  fs.writeFileSync(source, good)
  r = setup()
  t.equal(r.status, 0, `fixed: ${r.stderr}`)
  t.equal(runs(), 4)
  fs.rmSync(path.join(copy, 'dist', 'mount', 'cli.js'))
  r = setup()
  t.equal(r.status, 0)
  t.equal(runs(), 5, 'an output removed by hand is made again')
  t.ok(fs.existsSync(path.join(copy, 'dist', 'mount', 'cli.js')))
  r = setup()
  t.equal(runs(), 5, 'then nothing runs')
})
