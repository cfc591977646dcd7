-- sluice.tools.deepseek_v3 — DeepSeek V3 / R1-0528 calls:
--   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
--   ```json
--   {"location":"Beijing"}
--   ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>
-- (the bars are U+FF5C, the spaces U+2581: the model's own special tokens),
-- one <｜tool▁call▁begin｜>…<｜tool▁call▁end｜> per call.

local section = require("sluice.tools.deepseek_section")

local D = { name = "deepseek_v3", markers = { section.OPEN } }

-- One call's body (between call begin and call end) -> name, args text.
local function call(body)
    return body:match("^%s*[%w_]*%s*<｜tool▁sep｜>%s*([^\n]-)%s*\n%s*```json%s*\n(.-)\n?%s*```%s*$")
end

function D.parse(s, final)
    return section.parse(s, final, call)
end

-- The calls as the model writes them (tool use emulation).
function D.render(calls)
    return section.render(calls, function(c, args)
        return "function<｜tool▁sep｜>" .. c.name .. "\n```json\n" .. args .. "\n```"
    end)
end

return D
