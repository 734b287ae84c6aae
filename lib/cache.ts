// The byte-bounded cache of filled nodes (--cache-size). Keys are node paths prefixed by
// their checkpoint, so everything of a checkpoint can be dropped when it ends.

import { LRUCache } from 'lru-cache'
import type { ContentCache } from './tree/node'

export class NodeCache implements ContentCache {
  private readonly lru: LRUCache<string, Buffer>

  constructor(readonly maxBytes: number) {
    this.lru = new LRUCache<string, Buffer>({
      maxSize: maxBytes,
      // An empty buffer still costs its key and bookkeeping.
      sizeCalculation: (value, key) => value.length + key.length + 64,
    })
  }

  get(key: string): Buffer | undefined {
    return this.lru.get(key)
  }

  set(key: string, value: Buffer): void {
    // lru-cache refuses items larger than maxSize; such a node is simply recomputed.
    this.lru.set(key, value)
  }

  /** Bytes held now (keys and bookkeeping included). */
  get bytes(): number {
    return this.lru.calculatedSize
  }

  dropPrefix(prefix: string): void {
    for (const key of this.lru.keys()) if (key.startsWith(prefix)) this.lru.delete(key)
  }
}
