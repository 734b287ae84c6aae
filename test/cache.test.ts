// The cache of filled nodes stays under its byte bound (--cache-size), and a node whose
// contents were evicted is computed again, unchanged, when it is read again.

import t from 'tap'
import { NodeCache } from '../lib/cache'
import { attr, tableDir, type FileNode } from '../lib/tree/node'

t.test('the cache never holds more than its bound', async (t) => {
  const cache = new NodeCache(1 << 20)
  let most = 0
  for (let i = 0; i < 5000; i++) {
    cache.set(`c1/file-${i}`, Buffer.alloc(1000 + (i % 7) * 100, i & 0xff))
    most = Math.max(most, cache.bytes)
  }
  t.ok(most <= 1 << 20, `at most ${most} bytes held while 5,000 nodes (about 6 MB) went through`)
  t.ok(cache.bytes > (1 << 20) * 0.9, 'and it is used')
  t.equal(cache.get('c1/file-0'), undefined, 'the oldest entries went first')
  t.ok(cache.get('c1/file-4999'), 'the newest stayed')
  cache.dropPrefix('c1/')
  t.equal(cache.bytes, 0, 'dropping a checkpoint frees all of it')
})

t.test('an evicted node is filled again, with the same bytes', async (t) => {
  const cache = new NodeCache(64 * 1024)
  let fills = 0
  const dir = tableDir({}, [attr('value', () => { fills++; return 'forty-two' })], { key: 'c1/x', cache })
  const node = (await dir.lookup('value')) as FileNode
  t.equal((await node.read(0, 100)).toString(), 'forty-two\n')
  t.equal(await node.size(), 10, 'size matches what read returns')
  t.equal(fills, 1, 'computed once while cached')
  for (let i = 0; i < 100; i++) cache.set(`c2/filler-${i}`, Buffer.alloc(4096))
  t.equal((await node.read(0, 100)).toString(), 'forty-two\n')
  t.equal(fills, 2, 'computed again after eviction')
})
