-- The :CastraUp buffer without castrad (tests/tests/it/clients.rs runs it headless): events as
-- `castractl events --json` prints them, fed one line at a time. A base image's ImageFetch
-- events update one line in place; the steps and the end are appended. Prints the buffer;
-- any mismatch exits 1.
local castra = require('castra')

local function out(line) io.stdout:write(line .. '\n') end

local function fail(message)
  out('ERROR ' .. message)
  vim.cmd('cquit 1')
end

local function fetch(phase, done, total)
  local event = {
    ImageFetch = {
      vm = 'web-0', source = 'https://h/debian.qcow2', phase = phase,
      bytes_done = done, bytes_total = total, rate_bps = 1048576,
    },
  }
  return vim.fn.json_encode({ seq = 1, time = 't', operation = 'op-1', event = event })
end

local mib = 1048576
local buf = vim.api.nvim_create_buf(false, true)
vim.api.nvim_buf_set_lines(buf, 0, -1, false, { 'operation op-1' })
local view = castra.view(buf, { 'web-0' })
local lines = {
  fetch('checksums', 0, vim.NIL),
  fetch('download', 3 * mib, 12 * mib),
  fetch('download', 6 * mib, 12 * mib),
  -- An event kind this plugin does not know is passed over.
  '{"seq":2,"time":"t","operation":"op-1","event":{"VmTeleported":{"vm":"web-0"}}}',
  fetch('done', 12 * mib, 12 * mib),
  '{"seq":3,"time":"t","operation":"op-1","event":{"BootstrapStep":{"vm":"web-0",'
    .. '"step":"apply","status":"success","duration_ms":1,"detail":null}}}',
}
for _, line in ipairs(lines) do
  if castra.feed(view, line) then fail('ended before its terminal event') end
end
local ended = castra.feed(view, '{"seq":4,"time":"t","operation":"op-1","event":'
  .. '{"BootstrapCompleted":{"vm":"web-0","status":"Success","duration_ms":1,"stamp":null}}}')
if not ended then fail('the terminal event did not end it') end

local got = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
local want = {
  'operation op-1',
  'web-0            image  done  12.0 MiB  https://h/debian.qcow2',
  'web-0            apply            success',
  'web-0            Success',
}
out('== buffer')
for _, line in ipairs(got) do out(line) end
if vim.inspect(got) ~= vim.inspect(want) then fail('expected ' .. vim.inspect(want)) end

-- Mid-fetch, the line says how far, how fast and how long.
local text = castra.fetch_text({
  phase = 'download', source = 'https://h/debian.qcow2',
  bytes_done = 3 * mib, bytes_total = 12 * mib, rate_bps = mib,
})
local expected = 'download  3.0 MiB of 12.0 MiB (25%)  1.0 MiB/s  9s left  https://h/debian.qcow2'
if text ~= expected then fail(text) end
local unknown = castra.fetch_text({
  phase = 'download', source = 's', bytes_done = 512, bytes_total = vim.NIL, rate_bps = 0,
})
if unknown ~= 'download  512 B  s' then fail(unknown) end
out('ok')
vim.cmd('qall!')
