// Test hygiene: every node a test starts (the CLI above all) runs as a user's shell would run
// it, without tap's process-info loader, which tap puts back into each child's NODE_OPTIONS
// whatever `env` the test passes (with it, one CLI run in several hundred hung for good at
// exit). test/lib/mount.ts `userNode` is the one way to start one.

import { spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'
import { ckptfsWith, userEnv, userNode } from './lib/mount'
import { repo } from './lib/targets'

const printOptions = 'process.stdout.write(process.env.NODE_OPTIONS ?? "")'

t.test('a node started through userNode has no NODE_OPTIONS, even under tap', async (t) => {
  t.match(process.env.NODE_OPTIONS ?? '', /\S/, 'tap gives this test process its loaders')
  const plain = spawnSync(process.execPath, ['-e', printOptions], { encoding: 'utf8', env: userEnv })
  t.match(plain.stdout, /\S/, 'a plain spawn with NODE_OPTIONS deleted from env still gets them back from tap')
  const clean = spawnSync(...userNode('-e', printOptions), { encoding: 'utf8', env: userEnv })
  t.equal(clean.status, 0)
  t.equal(clean.stdout, '', 'through userNode, none')
  const cli = ckptfsWith({}, '--version')
  t.match(cli.stdout, /^ckptfs \d/, 'the CLI runs that way')
})

t.test('no test starts node or the CLI but through test/lib/mount.ts', async (t) => {
  const dir = path.join(repo, 'test')
  const files = [
    ...fs.readdirSync(dir).filter((f) => f.endsWith('.ts')).map((f) => path.join(dir, f)),
    ...fs.readdirSync(path.join(dir, 'lib')).filter((f) => f.endsWith('.ts') && f !== 'mount.ts').map((f) => path.join(dir, 'lib', f)),
  ].filter((f) => f !== __filename)
  const offenders = files.flatMap((file) => fs.readFileSync(file, 'utf8').split('\n')
    .map((line, i) => ({ where: `${path.relative(repo, file)}:${i + 1}`, line }))
    // Code only (comments may name the CLI); a line that drops NODE_OPTIONS itself is fine.
    .filter(({ line }) => !/^\s*(\/\/|\*)/.test(line) && /process\.execPath|cliPath|'bin', 'ckptfs'/.test(line) && !/-u'?,? '?NODE_OPTIONS/.test(line)))
  t.same(offenders.map((o) => `${o.where}: ${o.line.trim()}`), [], 'none')
})
