// A byte count as a reader wants it in a summary: "512 B", "4 KiB", "1.5 MiB".

export function byteSize(bytes: bigint | number): string {
  const n = Number(bytes)
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = n
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return unit === 0 ? `${n} B` : `${value >= 100 || Number.isInteger(value) ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`
}
