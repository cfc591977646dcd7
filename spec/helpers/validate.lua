-- spec.helpers.validate — is this a well-formed client stream?
--
-- Checks what a client SDK relies on, independent of any golden: for
-- Anthropic the SDK event order (message_start, one block open at a time
-- with consecutive indices, tool_use starting with input {}, message_delta +
-- message_stop, or error + message_stop when cut short); for OpenAI chat one
-- chunk id throughout, tool calls introduced with id and name, and [DONE]
-- last after either a finish_reason or an error chunk. Responses and Gemini
-- get the checks their terminal rules need. Each validator takes the records
-- of helpers.fixtures.records() and returns { complete = bool, ... } or
-- raises with the reason.

local json = require("sluice.json")

local M = {}

local function fail(i, msg, rec)
    error(string.format("record %d: %s (%s)", i, msg, rec and json.encode(rec.data) or "end"), 0)
end

function M.anthropic(records)
    local r1 = records[1]
    if not r1 or r1.event ~= "message_start" then fail(1, "stream must open with message_start", r1) end
    local u = r1.data.message and r1.data.message.usage
    if type(u) ~= "table" or type(u.input_tokens) ~= "number" or type(u.output_tokens) ~= "number" then
        fail(1, "message_start.message.usage must carry input_tokens and output_tokens", r1)
    end
    local open, next_index, kind = nil, 0, nil
    local args, tools = {}, {}
    local ended, errored, delta = false, false, nil
    for i = 2, #records do
        local r = records[i]
        local d = r.data
        if ended then fail(i, "record after message_stop", r) end
        if type(d) ~= "table" or d.type ~= r.event then fail(i, "event name must equal data.type", r) end
        local e = r.event
        if e == "ping" then
            -- allowed anywhere
        elseif e == "content_block_start" then
            if open then fail(i, "block opened while block " .. open .. " is open", r) end
            if delta or errored then fail(i, "block after message_delta/error", r) end
            if d.index ~= next_index then fail(i, "block index must be " .. next_index, r) end
            open, next_index = d.index, next_index + 1
            kind = d.content_block.type
            if kind == "tool_use" then
                local inp = d.content_block.input
                if type(inp) ~= "table" or json.is_array(inp) or next(inp) ~= nil then
                    fail(i, "tool_use must start with input: {}", r)
                end
                if type(d.content_block.id) ~= "string" or type(d.content_block.name) ~= "string" then
                    fail(i, "tool_use needs id and name", r)
                end
                args[open] = {}
                tools[#tools + 1] = { index = open, id = d.content_block.id, name = d.content_block.name }
            end
        elseif e == "content_block_delta" then
            if d.index ~= open then fail(i, "delta for a block that is not open", r) end
            local dt = d.delta.type
            local okd = (kind == "text" and dt == "text_delta")
                or (kind == "tool_use" and dt == "input_json_delta")
                or (kind == "thinking" and (dt == "thinking_delta" or dt == "signature_delta"))
            if not okd then fail(i, dt .. " inside a " .. tostring(kind) .. " block", r) end
            if dt == "input_json_delta" then table.insert(args[open], d.delta.partial_json) end
        elseif e == "content_block_stop" then
            if d.index ~= open then fail(i, "stop for a block that is not open", r) end
            open = nil
        elseif e == "message_delta" then
            if open then fail(i, "message_delta with block " .. open .. " open", r) end
            if errored then fail(i, "message_delta after error", r) end
            if type(d.delta.stop_reason) ~= "string" then fail(i, "message_delta needs stop_reason", r) end
            if type(d.usage) ~= "table" or type(d.usage.output_tokens) ~= "number" then
                fail(i, "message_delta needs usage.output_tokens", r)
            end
            delta = d
        elseif e == "error" then
            if open then fail(i, "error with block " .. open .. " open", r) end
            if delta then fail(i, "error after message_delta", r) end
            if type(d.error) ~= "table" or type(d.error.message) ~= "string" or d.error.message == "" then
                fail(i, "error needs error.type and error.message", r)
            end
            errored = d.error
        elseif e == "message_stop" then
            if open then fail(i, "message_stop with a block open", r) end
            if not delta and not errored then fail(i, "message_stop without message_delta or error", r) end
            ended = true
        else
            fail(i, "unknown event " .. tostring(e), r)
        end
    end
    if not ended then fail(#records + 1, "stream must end with message_stop") end
    local complete = delta ~= nil and not errored
    if complete then
        for _, t in ipairs(tools) do
            local s = table.concat(args[t.index])
            local v = s == "" and {} or json.decode(s)
            if type(v) ~= "table" then fail(#records, "tool input of " .. t.id .. " is not JSON: " .. s) end
            t.input = v
        end
    end
    return { complete = complete, error = errored, stop_reason = delta and delta.delta.stop_reason,
             usage = delta and delta.usage, tools = tools }
end

M["openai-chat"] = function(records)
    local n = #records
    if n == 0 or records[n].data ~= "[DONE]" then fail(n, "stream must end with data: [DONE]", records[n]) end
    local id, finish, errored = nil, nil, nil
    local calls, usage = {}, nil
    for i = 1, n - 1 do
        local r = records[i]
        local d = r.data
        if r.event ~= json.null then fail(i, "chat streams have no event names", r) end
        if type(d) ~= "table" then fail(i, "[DONE] before the end", r) end
        if errored then fail(i, "chunk after an error chunk", r) end
        if d.error ~= nil then
            if type(d.error.message) ~= "string" or d.error.message == "" then fail(i, "error chunk needs a message", r) end
            errored = d.error
        else
            if d.object ~= "chat.completion.chunk" then fail(i, "object must be chat.completion.chunk", r) end
            id = id or d.id
            if d.id ~= id or type(id) ~= "string" or id:sub(1, 9) ~= "chatcmpl-" then
                fail(i, "every chunk must carry the same chatcmpl- id", r)
            end
            if type(d.created) ~= "number" then fail(i, "chunk needs created", r) end
            if not json.is_array(d.choices) then fail(i, "choices must be an array", r) end
            if d.usage ~= nil and d.usage ~= json.null then
                if #d.choices ~= 0 then fail(i, "usage chunk must have choices: []", r) end
                usage = d.usage
            end
            local c = d.choices[1]
            if c then
                if finish then fail(i, "content after finish_reason", r) end
                for _, tc in ipairs(c.delta.tool_calls or {}) do
                    local call = calls[tc.index + 1]
                    if not call then
                        if tc.index ~= #calls then fail(i, "tool call indices must be consecutive", r) end
                        if type(tc.id) ~= "string" or tc.type ~= "function" or type(tc["function"].name) ~= "string" then
                            fail(i, "first fragment of a tool call needs id, type and name", r)
                        end
                        call = { id = tc.id, name = tc["function"].name, args = {} }
                        calls[tc.index + 1] = call
                    end
                    table.insert(call.args, tc["function"].arguments or "")
                end
                if c.finish_reason ~= json.null and c.finish_reason ~= nil then finish = c.finish_reason end
            end
        end
    end
    local complete = finish ~= nil and not errored
    if complete then
        for _, c in ipairs(calls) do
            local s = table.concat(c.args)
            local v = s == "" and {} or json.decode(s)
            if type(v) ~= "table" then fail(n, "arguments of " .. c.id .. " are not JSON: " .. s) end
            c.input = v
        end
    end
    return { complete = complete, error = errored, stop_reason = finish, usage = usage, tools = calls }
end

M["openai-responses"] = function(records)
    local n = #records
    if n == 0 then fail(1, "empty stream") end
    local seq = -1
    for i, r in ipairs(records) do
        local d = r.data
        if type(d) ~= "table" or d.type ~= r.event then fail(i, "event name must equal data.type", r) end
        if d.sequence_number ~= nil then
            if d.sequence_number <= seq then fail(i, "sequence_number must increase", r) end
            seq = d.sequence_number
        end
    end
    local last = records[n].event
    if last ~= "response.completed" and last ~= "response.incomplete" and last ~= "response.failed" then
        fail(n, "stream must end with a terminal response event", records[n])
    end
    return { complete = last ~= "response.failed", error = last == "response.failed" }
end

function M.gemini(records)
    local n = #records
    if n == 0 then fail(1, "empty stream") end
    for i, r in ipairs(records) do
        if type(r.data) ~= "table" then fail(i, "chunk must be a JSON object", r) end
    end
    local last = records[n].data
    if last.error then return { complete = false, error = last.error } end
    local c = last.candidates and last.candidates[1]
    if not c or type(c.finishReason) ~= "string" then fail(n, "last chunk needs finishReason or error", records[n]) end
    return { complete = true, stop_reason = c.finishReason }
end

return M
