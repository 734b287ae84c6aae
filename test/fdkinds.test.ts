// One fd type, one module: the places outside a handler that must know its type agree with
// the handlers. The restorer stub's table of kinds (what `restorer --kinds` prints) is the
// handlers' stubKinds, number for number; every fd_type a handler loads has a value in the
// image's FdType enum, and every handler's image message is a member of FileDescription's
// `details` oneof.

import { execFileSync } from 'child_process'
import * as path from 'path'
import t from 'tap'
import { fdTypes, handlerForType, stubKinds } from '../lib/files/index'
import { imageSchema } from '../lib/image/schema'

const stub = path.join(__dirname, '..', 'addon', 'build', 'Release', 'restorer')

t.test('the stub opens exactly the kinds the handlers plan, under the same numbers', async (t) => {
  const listed = execFileSync(stub, ['--kinds'], { encoding: 'utf8' })
  const inStub = new Map<string, number>()
  for (const line of listed.trim().split('\n')) {
    const m = /^(\d+) (\w+)$/.exec(line)
    t.ok(m, `stub line ${JSON.stringify(line)} is "NUMBER NAME"`)
    if (m) inStub.set(m[2], Number(m[1]))
  }
  const inHandlers = new Map(Object.entries(stubKinds()))
  t.ok(inHandlers.size > 0, 'the handlers declare kinds')
  t.same([...inStub].sort(), [...inHandlers].sort(), 'kind name -> number, stub and handlers')
})

t.test('every fd_type has an FdType value in the image and its message in the details oneof', async (t) => {
  const schema = imageSchema()
  const typeField = schema.FileDescription.fields.find((f) => f.name === 'type')
  const enumValues = new Set(typeField?.enumSchema?.byNumber.values())
  const details = new Set(schema.FileDescription.fields.filter((f) => f.oneof === 'details').map((f) => f.name))
  for (const type of fdTypes()) {
    t.ok(enumValues.has(type), `FdType has ${type}`)
    const field = handlerForType(type)?.image?.field
    if (field !== undefined) t.ok(details.has(field), `${type}: FileDescription.details has ${field}`)
  }
  t.same([...enumValues].filter((v) => !fdTypes().includes(v as never)), [], 'no FdType value without a handler')
})
