// Counts cache-tests results the way the suite's own results code does (determineTestResult,
// dependencies honoured, as on cache-tests.fyi) and compares them with the suite's stored
// results for the anchors. Usage: node summary.mjs SUITE_DIR name=results.json ...
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const [suite, ...runs] = process.argv.slice(2)
const lib = fs.existsSync(path.join(suite, 'test-engine/lib/results.mjs'))
  ? 'test-engine/lib/results.mjs'
  : 'lib/results.mjs'
const { default: tests } = await import(pathToFileURL(path.join(suite, 'tests/index.mjs')))
const { determineTestResult, resultTypes } = await import(pathToFileURL(path.join(suite, lib)))

const anchors = [
  ['nginx', 'nginx.json'],
  ['Varnish', 'varnish.json'],
  ['Squid', 'squid.json'],
  ['Traffic Server', 'trafficserver.json'],
  ['Apache httpd', 'apache.json']
]
const columns = [
  ['pass', resultTypes.pass],
  ['required fail', resultTypes.fail],
  ['optional fail', resultTypes.optional_fail],
  ['setup fail', resultTypes.setup_fail],
  ['dependency fail', resultTypes.dependency_fail],
  ['harness fail', resultTypes.harness_fail],
  ['retry', resultTypes.retry],
  ['check yes', resultTypes.yes],
  ['check no', resultTypes.no],
  ['untested', resultTypes.untested]
]

function count (results) {
  const c = new Map(columns.map(([n]) => [n, 0]))
  const failing = []
  for (const s of tests) {
    for (const t of s.tests) {
      const r = determineTestResult(tests, t.id, results)
      const col = columns.find(([, type]) => type === r)
      if (col) c.set(col[0], c.get(col[0]) + 1)
      if ([resultTypes.fail, resultTypes.optional_fail, resultTypes.setup_fail,
        resultTypes.harness_fail, resultTypes.retry].includes(r)) {
        const detail = Array.isArray(results[t.id]) ? results[t.id].join(': ') : ''
        failing.push(`${r[2]} ${t.id} (${t.kind || 'required'}): ${detail}`)
      }
    }
  }
  return { c, failing }
}

const rows = []
for (const spec of runs) {
  const [name, file] = spec.split('=')
  rows.push([`tower-valkey-cache (${name})`, count(JSON.parse(fs.readFileSync(file)))])
}
for (const [name, file] of anchors) {
  const f = path.join(suite, 'results', file)
  if (fs.existsSync(f)) rows.push([name, count(JSON.parse(fs.readFileSync(f)))])
}

let total = 0
for (const s of tests) total += s.tests.length
console.log(`\ncache-tests: ${total} tests\n`)
const shown = columns.filter(([n]) => rows.some(([, { c }]) => c.get(n) > 0))
console.log(`| implementation | ${shown.map(([n]) => n).join(' | ')} |`)
console.log(`|---|${shown.map(() => '---:').join('|')}|`)
for (const [name, { c }] of rows) {
  console.log(`| ${name} | ${shown.map(([n]) => c.get(n)).join(' | ')} |`)
}
for (const [name, { failing }] of rows.slice(0, runs.length)) {
  console.log(`\n${name}: not passing (required fail, optional fail, setup, harness, retry)`)
  for (const f of failing) console.log(`  ${f}`)
}
