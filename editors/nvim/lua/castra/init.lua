-- Castra in Neovim: a small plugin and a starting point (proto-docs/PROTOCOL.md, "Clients").
--
-- Calls are JSON-RPC over HTTP POST on castrad's Unix socket, through libuv (vim.loop; named
-- vim.uv from Neovim 0.10); the live feed of :CastraUp is `castractl events --json` as a job.
--
--   :CastraStatus           a buffer with the project's VMs
--   :CastraUp [OVERRIDES]   starts `up` (OVERRIDES as for --bootstrap), live steps in a buffer
--                           (a base image being fetched: one line per image, updated in place);
--                           the outcome in a notification and in g:castra_statusline
--   :CastraLogs VM          the VM's latest durable log in a buffer
--
-- The project is the nearest castra.toml from the current directory upwards. The socket is
-- $CASTRA_SOCKET, else $XDG_RUNTIME_DIR/castra/castrad.sock; castractl is g:castra_castractl,
-- else $CASTRA_CASTRACTL, else `castractl` on PATH.
local M = {}
local uv = vim.uv or vim.loop

-- A JSON null decodes to vim.NIL: shown as ''.
local function text(value)
  if value == nil or value == vim.NIL then return '' end
  return tostring(value)
end

local function socket_path()
  local env = os.getenv('CASTRA_SOCKET')
  if env and env ~= '' then return env end
  return (os.getenv('XDG_RUNTIME_DIR') or '') .. '/castra/castrad.sock'
end

local function config_path()
  local found = vim.fn.findfile('castra.toml', '.;')
  if found == '' then error('castra: no castra.toml here or above') end
  return vim.fn.fnamemodify(found, ':p')
end

-- One JSON-RPC call; callback(err, result) on the main loop. HTTP/1.0, so castrad answers
-- with a plain body and closes: read to the end, take what follows the headers.
function M.rpc(method, params, callback)
  local body = vim.fn.json_encode({ jsonrpc = '2.0', id = 1, method = method, params = params })
  local request = table.concat({
    'POST / HTTP/1.0', 'Host: castrad', 'Content-Type: application/json',
    'Content-Length: ' .. #body, '', body,
  }, '\r\n')
  local pipe = uv.new_pipe(false)
  local chunks = {}
  local function finish(err, result)
    if not pipe:is_closing() then pipe:close() end
    vim.schedule(function() callback(err, result) end)
  end
  pipe:connect(socket_path(), function(err)
    if err then return finish('castra: cannot reach castrad: ' .. err) end
    pipe:write(request)
    pipe:read_start(function(read_err, data)
      if read_err then return finish('castra: ' .. read_err) end
      if data then return table.insert(chunks, data) end
      local response = table.concat(chunks)
      local payload = response:match('\r\n\r\n(.*)$')
      vim.schedule(function()
        local ok, reply = pcall(vim.fn.json_decode, payload or '')
        if not ok then
          return finish('castra: not a JSON-RPC reply: ' .. response:sub(1, 200))
        end
        if reply.error then
          return finish(string.format('castra: %s (%d)', reply.error.message, reply.error.code))
        end
        finish(nil, reply.result)
      end)
    end)
  end)
end

local function show(name, lines)
  local buf = vim.fn.bufnr(name)
  if buf == -1 then
    buf = vim.api.nvim_create_buf(true, true)
    vim.api.nvim_buf_set_name(buf, name)
  end
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.api.nvim_set_current_buf(buf)
  return buf
end

local function fail(err)
  vim.notify(err, vim.log.levels.ERROR)
  vim.g.castra_error = err
end

function M.status()
  M.rpc('castra.status', { config = config_path() }, function(err, result)
    if err then return fail(err) end
    local lines = {}
    for _, project in ipairs(result.projects) do
      table.insert(lines, 'project ' .. project.name)
      for _, vm in ipairs(project.vms) do
        table.insert(lines, string.format('%-16s %-9s %s', vm.name, vm.backend, vm.state))
      end
    end
    show('castra://status', lines)
    vim.g.castra_done = 'status'
  end)
end

-- A size for people, in binary units: '512 B', '340.5 MiB'.
local function size(n)
  local units = { 'KiB', 'MiB', 'GiB', 'TiB' }
  if n < 1024 then return string.format('%d B', n) end
  local unit = 0
  repeat
    n = n / 1024
    unit = unit + 1
  until n < 1024 or unit == #units
  return string.format('%.1f %s', n, units[unit])
end

-- How far an ImageFetch event's fetch is: 'download  3.0 MiB of 12.0 MiB (25%)  1.0 MiB/s
-- 9s left  SOURCE' (what is known of it: a server may not say the size).
function M.fetch_text(ev)
  local done, total, rate = ev.bytes_done, ev.bytes_total, ev.rate_bps
  if total == vim.NIL or total == 0 then total = nil end
  if ev.phase == 'checksums' then return 'checksums  ' .. ev.source end
  if ev.phase == 'done' then return string.format('done  %s  %s', size(done), ev.source) end
  local parts = { ev.phase }
  if total then
    local percent = math.floor(math.min(done, total) * 100 / total)
    table.insert(parts, string.format('%s of %s (%d%%)', size(done), size(total), percent))
  else
    table.insert(parts, size(done))
  end
  if rate > 0 then
    table.insert(parts, size(rate) .. '/s')
    if total and total > done then
      table.insert(parts, string.format('%ds left', math.ceil((total - done) / rate)))
    end
  end
  table.insert(parts, ev.source)
  return table.concat(parts, '  ')
end

-- The :CastraUp buffer `buf` for the VMs `vms`: what M.feed updates.
function M.view(buf, vms)
  local waiting = {}
  for _, vm in ipairs(vms) do waiting[vm] = true end
  return { buf = buf, waiting = waiting, fetches = {} }
end

-- One line of `castractl events --json` shown in `view`: a step or a VM's end appended, an
-- image fetch's line (one per VM and image) replaced in place. Returns true once every VM has
-- its terminal event. Unknown event kinds and fields are ignored (forward compatibility).
function M.feed(view, line)
  local ok, envelope = pcall(vim.fn.json_decode, line)
  if not ok or type(envelope) ~= 'table' or type(envelope.event) ~= 'table' then return false end
  local kind, ev = next(envelope.event)
  local function append(text) vim.api.nvim_buf_set_lines(view.buf, -1, -1, false, { text }) end
  if kind == 'BootstrapStep' then
    append(string.format('%-16s %-16s %s', ev.vm, ev.step, ev.status))
  elseif kind == 'ImageFetch' then
    local text = string.format('%-16s image  %s', ev.vm, M.fetch_text(ev))
    local key = ev.vm .. '\n' .. ev.source
    local at = view.fetches[key]
    if at then
      vim.api.nvim_buf_set_lines(view.buf, at, at + 1, false, { text })
    else
      append(text)
      view.fetches[key] = vim.api.nvim_buf_line_count(view.buf) - 1
    end
    if ev.phase == 'done' then view.fetches[key] = nil end
  elseif kind == 'BootstrapCompleted' or kind == 'BootstrapFailed' then
    local how = kind == 'BootstrapCompleted' and ev.status or 'Failed: ' .. text(ev.error)
    append(string.format('%-16s %s', ev.vm, how))
    view.waiting[ev.vm] = nil
    return next(view.waiting) == nil
  end
  return false
end

function M.up(overrides)
  local config = config_path()
  local params = { config = config, bootstrap = overrides or {} }
  M.rpc('castra.up', params, function(err, started)
    if err then return fail(err) end
    local buf = show('castra://up', { 'operation ' .. started.operation })
    vim.g.castra_statusline = 'castra: up ' .. started.operation
    local view = M.view(buf, started.vms)
    local job
    local function on_line(line)
      if not M.feed(view, line) then return end
      vim.fn.jobstop(job)
      M.rpc('castra.outcome', { operation = started.operation }, function(out_err, outcome)
        if out_err then return fail(out_err) end
        local counts, order = {}, {}
        for _, o in ipairs(outcome.outcomes) do
          if not counts[o.status] then table.insert(order, o.status) end
          counts[o.status] = (counts[o.status] or 0) + 1
        end
        local parts = {}
        for _, s in ipairs(order) do table.insert(parts, counts[s] .. ' ' .. s) end
        vim.g.castra_statusline = 'castra: ' .. table.concat(parts, ', ')
        vim.api.nvim_buf_set_lines(buf, -1, -1, false,
          { 'outcome: ' .. table.concat(parts, ', ') })
        vim.notify(vim.g.castra_statusline)
        vim.g.castra_done = 'up'
      end)
    end
    -- --since 0 replays what this operation already published: no event is missed.
    job = vim.fn.jobstart({
      vim.g.castra_castractl or os.getenv('CASTRA_CASTRACTL') or 'castractl',
      'events', '--json', '--config', config, '--operation', started.operation, '--since', '0',
    }, {
      stdout_buffered = false,
      on_stdout = function(_, data)
        for _, line in ipairs(data) do
          if line ~= '' then on_line(line) end
        end
      end,
    })
  end)
end

function M.logs(vm)
  M.rpc('castra.logs', { config = config_path(), vm = vm }, function(err, result)
    if err then return fail(err) end
    local log = result.log
    local lines = {
      string.format('%s run %s: %s (%d ms)', log.vm, log.run_id, log.status, log.duration_ms),
    }
    for _, step in ipairs(log.steps) do
      local line = string.format('  %-16s %-8s %s', step.step, step.status, text(step.detail))
      table.insert(lines, line)
    end
    table.insert(lines, 'output: ' .. text(log.output_path))
    show('castra://logs/' .. vm, lines)
    vim.g.castra_done = 'logs'
  end)
end

function M.setup()
  vim.api.nvim_create_user_command('CastraStatus', function() M.status() end, {})
  vim.api.nvim_create_user_command('CastraUp', function(opts) M.up(opts.fargs) end, { nargs = '*' })
  vim.api.nvim_create_user_command('CastraLogs', function(opts) M.logs(opts.args) end,
    { nargs = 1 })
end

return M
