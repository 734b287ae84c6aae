// Test hygiene: every node a test starts (the CLI above all) runs as a user's shell would run
// it, without tap's process-info loader, which tap puts back into each child's NODE_OPTIONS
// whatever `env` the test passes (with it, one CLI run in several hundred hung for good at
// exit). test/lib/mount.ts `userNode` is the one way to start one. And the tests are
// type-checked (test/tsconfig.json), so a test cannot call what lib no longer has.

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

t.test('the tests type-check, every one of them (tsc -p test)', async (t) => {
  const tsc = path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc')
  // npm test has just run the same check, so its incremental record makes this one quick.
  const check = spawnSync(...userNode(tsc, '-p', path.join(repo, 'test')), { encoding: 'utf8', env: userEnv, timeout: 600_000 })
  t.equal(check.stdout + check.stderr, '', 'no type errors')
  t.equal(check.status, 0)
  // Nothing under test/ is left out of the check.
  const listed = spawnSync(...userNode(tsc, '-p', path.join(repo, 'test'), '--listFilesOnly'), { encoding: 'utf8', env: userEnv, timeout: 600_000 })
  t.equal(listed.status, 0, listed.stderr)
  const checked = new Set(listed.stdout.split('\n').filter(Boolean).map((f) => path.resolve(f)))
  const all = (dir: string): string[] => fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) return e.name === 'fixtures' ? [] : all(p)
    return e.name.endsWith('.ts') ? [p] : []
  })
  const tests = all(path.join(repo, 'test'))
  t.ok(tests.length > 30, `${tests.length} TypeScript files under test/`)
  t.same(tests.filter((f) => !checked.has(f)).map((f) => path.relative(repo, f)), [], 'every one is checked')
})
