// Loads the native helper once, typed by addon/index.d.ts. Works from the TypeScript sources
// (tests) and from the compiled dist/ tree alike.

import * as fs from 'fs'
import * as path from 'path'
import type { Addon } from '../addon/index'
import { CkptError } from './errors'

function locate(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'addon', 'build', 'Release', 'ckptfs.node')
    if (fs.existsSync(candidate)) return candidate
  }
  throw new CkptError('native helper not built: run `npm run setup` (addon/build/Release/ckptfs.node is missing)')
}

export const native: Addon = require(locate())
