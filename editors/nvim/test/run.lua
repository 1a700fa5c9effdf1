-- The headless test of the plugin (tests/tests/it/clients.rs runs it in a project directory):
-- :CastraStatus, :CastraUp, :CastraLogs web-0 against a real castrad; each buffer is printed
-- on stdout. Any error, or no answer within 30 s, exits 1.
require('castra').setup()

local function out(line) io.stdout:write(line .. '\n') end

local function run(command, done)
  vim.g.castra_done, vim.g.castra_error = nil, nil
  vim.cmd(command)
  local ok = vim.wait(30000, function()
    return vim.g.castra_done == done or vim.g.castra_error ~= nil
  end, 20)
  if vim.g.castra_error or not ok then
    out('ERROR ' .. command .. ': ' .. tostring(vim.g.castra_error or 'no answer in 30 s'))
    vim.cmd('cquit 1')
  end
  out('== ' .. command)
  for _, line in ipairs(vim.api.nvim_buf_get_lines(0, 0, -1, false)) do out(line) end
end

run('CastraStatus', 'status')
run('CastraUp', 'up')
out('statusline ' .. vim.g.castra_statusline)
run('CastraLogs web-0', 'logs')
run('CastraStatus', 'status')
vim.cmd('qall!')
