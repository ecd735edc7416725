package script

import (
	"errors"
	"fmt"
	"strings"

	"go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

// Error is a workflow error with the script position it happened at and,
// when it happened while running, the Starlark call stack.
type Error struct {
	Msg   string
	Pos   syntax.Position
	Stack starlark.CallStack // innermost call last
	Cause error
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Pos.IsValid() {
		fmt.Fprintf(&b, "%s: ", e.Pos)
	}
	b.WriteString(e.Msg)
	if len(e.Stack) > 1 {
		b.WriteString("\nTraceback (most recent call last):")
		for _, fr := range e.Stack {
			fmt.Fprintf(&b, "\n  %s: in %s", fr.Pos, fr.Name)
		}
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Cause }

// FromEval converts an error from Starlark execution into an *Error whose
// stack runs from main down to the failing call, across parallel branches
// (each branch runs on its own thread, so its stack is stitched below the
// caller's). The message is the innermost cause's, without Starlark's own
// position prefixes.
func FromEval(err error) error {
	if err == nil {
		return nil
	}
	var stack starlark.CallStack
	msg := ""
	cur := err
	var cause error = err
	var summaries []string
	for cur != nil {
		// An error between two Starlark threads (a parallel's summary of
		// its failed branches) keeps its own words in front.
		if s, ok := cur.(interface{ Summary() string }); ok {
			summaries = append(summaries, s.Summary())
		}
		var ev *starlark.EvalError
		if !errors.As(cur, &ev) {
			break
		}
		// Drop the builtin frame at the top: the position is the
		// script's call of it.
		for _, fr := range ev.CallStack {
			if fr.Pos.Filename() == "<builtin>" {
				continue
			}
			stack = append(stack, fr)
		}
		msg = ev.Msg
		cause = ev.Unwrap()
		cur = cause
	}
	if len(stack) == 0 {
		return err
	}
	var se *Error
	if errors.As(err, &se) && se.Pos.IsValid() && len(se.Stack) == 0 {
		return se
	}
	if cause != nil {
		msg = causeMessage(cause, msg)
	}
	for i := len(summaries) - 1; i >= 0; i-- {
		msg = summaries[i] + "; the first: " + msg
	}
	return &Error{Msg: msg, Pos: stack[len(stack)-1].Pos, Stack: stack, Cause: err}
}

// causeMessage prefers a message that does not repeat positions already
// carried by the stack.
func causeMessage(cause error, fallback string) string {
	var m interface{ UserMessage() string }
	if errors.As(cause, &m) {
		return m.UserMessage()
	}
	if fallback != "" {
		return fallback
	}
	return cause.Error()
}
