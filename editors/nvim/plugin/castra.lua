-- Defines :CastraStatus, :CastraUp and :CastraLogs (lua/castra/init.lua).
require('castra').setup()
