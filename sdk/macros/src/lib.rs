//! Attribute macros of the Weir plugin SDK, one per kind of plugin. Use them through `weir-sdk`,
//! which re-exports them: `#[weir_sdk::transform]`, `#[weir_sdk::window]`, `#[weir_sdk::join]`.

use proc_macro::TokenStream;
use proc_macro2::{Ident, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::{
    FnArg, GenericArgument, GenericParam, ItemFn, ItemImpl, PathArguments, ReturnType, Type,
};

/// Marks a plugin's transform function, `fn(event: &Event, ctx: &mut Context) -> Result<()>`.
///
/// See `weir_sdk::transform` for the documentation.
#[proc_macro_attribute]
pub fn transform(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into()).into()
}

/// The expansion, or the author's item followed by the errors (so that the rest of the crate
/// still resolves the function and no unrelated errors follow).
fn expand(attr: TokenStream2, item: TokenStream2) -> TokenStream2 {
    let function = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let error = syn::Error::new_spanned(
                &item,
                "`#[weir_sdk::transform]` goes on a function: \
                 `fn process(event: &Event, ctx: &mut Context) -> Result<()>`",
            );
            return with_errors(item, error);
        }
    };
    if !attr.is_empty() {
        let error = syn::Error::new_spanned(&attr, "`#[weir_sdk::transform]` takes no arguments");
        return with_errors(item, error);
    }
    if let Err(error) = check_signature(&function) {
        return with_errors(item, error);
    }
    glue(&function)
}

fn with_errors(item: TokenStream2, error: syn::Error) -> TokenStream2 {
    let error = error.to_compile_error();
    quote! { #item #error }
}

/// Checks that `function` has the signature of a transform function; every error points at the
/// offending part of the author's code and says what is expected.
fn check_signature(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    let expected = format!(
        "expected `fn {}(event: &Event, ctx: &mut Context) -> Result<()>`",
        sig.ident
    );
    let mut errors: Vec<syn::Error> = Vec::new();
    let mut fail = |tokens: &dyn quote::ToTokens, what: &str| {
        errors.push(syn::Error::new_spanned(
            tokens,
            format!("{what}; {expected}"),
        ));
    };
    if let Some(asyncness) = &sig.asyncness {
        fail(
            asyncness,
            "a transform function cannot be `async`: it runs synchronously on each event",
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        fail(unsafety, "a transform function cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        fail(abi, "a transform function cannot have an ABI (`extern`)");
    }
    if let Some(variadic) = &sig.variadic {
        fail(variadic, "a transform function cannot be variadic");
    }
    for param in &sig.generics.params {
        match param {
            GenericParam::Lifetime(_) => {}
            GenericParam::Type(_) | GenericParam::Const(_) => fail(
                param,
                "a transform function cannot be generic: the host calls one concrete function",
            ),
        }
    }
    let args: Vec<&FnArg> = sig.inputs.iter().collect();
    match args.as_slice() {
        [event, ctx] => {
            if !is_reference_to(event, false, "Event") {
                fail(
                    *event,
                    "the first argument of a transform function is the input event, `&Event`",
                );
            }
            if !is_reference_to(ctx, true, "Context") {
                fail(
                    *ctx,
                    "the second argument of a transform function is the context, `&mut Context`",
                );
            }
        }
        _ => {
            let found = format!(
                "a transform function takes two arguments, the event and the context, not {}",
                args.len()
            );
            if args.is_empty() {
                errors.push(syn::Error::new(
                    sig.paren_token.span.join(),
                    format!("{found}; {expected}"),
                ));
            } else {
                fail(&sig.inputs, &found);
            }
        }
    }
    match &sig.output {
        ReturnType::Default => errors.push(syn::Error::new(
            sig.paren_token.span.close(),
            format!(
                "a transform function returns `Result<()>`: `Ok(())` when the event is handled, \
                 `Err(..)` to reject it; {expected}"
            ),
        )),
        ReturnType::Type(_, ty) => {
            if !is_path_to(ty, "Result") || !first_argument_is_unit(ty) {
                errors.push(syn::Error::new_spanned(
                    ty,
                    format!(
                        "a transform function returns `Result<()>` (`weir_sdk::Result`): \
                         `Ok(())` when the event is handled, `Err(..)` to reject it, and its \
                         records go through `ctx.emit`; {expected}"
                    ),
                ));
            }
        }
    }
    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(mut first) => {
            for error in errors {
                first.combine(error);
            }
            Err(first)
        }
    }
}

/// Whether `arg` is a typed argument `&Name` (or `&mut Name`), with `Name` possibly qualified or
/// with a lifetime (`&weir_sdk::Event<'_>`).
fn is_reference_to(arg: &FnArg, mutable: bool, name: &str) -> bool {
    let FnArg::Typed(arg) = arg else {
        return false;
    };
    let Type::Reference(reference) = strip(&arg.ty) else {
        return false;
    };
    reference.mutability.is_some() == mutable && is_path_to(&reference.elem, name)
}

/// Whether `ty` is a path whose last segment is `name`.
fn is_path_to(ty: &Type, name: &str) -> bool {
    match strip(ty) {
        Type::Path(path) => {
            path.qself.is_none() && path.path.segments.last().is_some_and(|s| s.ident == name)
        }
        _ => false,
    }
}

/// Whether the path type `ty` has no generic arguments or `()` as its first one (`Result<()>`,
/// `Result<(), Error>`, or an alias without arguments).
fn first_argument_is_unit(ty: &Type) -> bool {
    let Type::Path(path) = strip(ty) else {
        return false;
    };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    match &last.arguments {
        PathArguments::None => true,
        PathArguments::AngleBracketed(args) => match args.args.first() {
            Some(GenericArgument::Type(Type::Tuple(tuple))) => tuple.elems.is_empty(),
            _ => false,
        },
        PathArguments::Parenthesized(_) => false,
    }
}

fn strip(ty: &Type) -> &Type {
    match ty {
        Type::Paren(inner) => strip(&inner.elem),
        Type::Group(inner) => strip(&inner.elem),
        _ => ty,
    }
}

/// The author's function, unchanged, followed by:
/// - a crate-root marker that makes a second plugin in the crate an error at its name;
/// - a check of the function against the exact type, reported at its name;
/// - on Wasm only, the world's bindings and the export of `weir:plugin/transform@0.3.0` running
///   the function on each event.
fn glue(function: &ItemFn) -> TokenStream2 {
    let name = &function.sig.ident;
    let span = name.span();
    let check = quote_spanned! {span=>
        const _: ::weir_sdk::__private::TransformFn = #name;
    };
    let once = only_one_plugin(span);
    let guest = world_bindings(
        "event-transform",
        quote! {
            impl exports::weir::plugin::transform::Guest for WeirSdkPlugin {
                fn process(batch: ::weir_sdk::__private::EventBatch) -> ::weir_sdk::__private::OutputBatch {
                    ::weir_sdk::__private::process_batch(batch, super::#name)
                }
            }
        },
    );
    quote! {
        #function
        #once
        #check
        #guest
    }
}

/// A crate-root marker, spanned at `span`, that makes a second plugin in the crate an error there:
/// a component implements one world, with one plugin function or `impl`.
fn only_one_plugin(span: proc_macro2::Span) -> TokenStream2 {
    let marker = Ident::new("__weir_sdk_only_one_plugin_per_crate", span);
    quote_spanned! {span=>
        /// Marks the crate's one Weir plugin: a second one is an error here.
        #[doc(hidden)]
        #[macro_export]
        macro_rules! #marker {
            () => {};
        }
    }
}

/// The contract, embedded at the SDK's build: this crate's copy of the host's `wit/plugin.wit`
/// (kept equal to it by `scripts/sync-wit` and the SDK's test `wit_copies`), inside the crate so
/// that it builds outside this repository too.
const WIT: &str = include_str!("../wit/plugin.wit");

/// On Wasm only: bindings of `world` generated in the plugin's crate (by the SDK's `__guest!`),
/// reusing the SDK's modules for the shared types and the host's imports, so that the component
/// describes exactly this world; `export_impl` implements its export on `WeirSdkPlugin`.
fn world_bindings(world: &str, export_impl: TokenStream2) -> TokenStream2 {
    quote! {
        ::weir_sdk::__private::guest! {
            world: #world,
            wit: #WIT,
            export: { #export_impl }
        }
    }
}

/// Marks a join enrichment's function,
/// `fn(left: Option<&Event>, right: Option<&Event>, ctx: &mut Context) -> Result<()>`.
///
/// See `weir_sdk::join` for the documentation.
#[proc_macro_attribute]
pub fn join(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_join(attr.into(), item.into()).into()
}

fn expand_join(attr: TokenStream2, item: TokenStream2) -> TokenStream2 {
    let function = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let error = syn::Error::new_spanned(
                &item,
                "`#[weir_sdk::join]` goes on a function: `fn enrich(left: Option<&Event>, \
                 right: Option<&Event>, ctx: &mut Context) -> Result<()>`",
            );
            return with_errors(item, error);
        }
    };
    if !attr.is_empty() {
        let error = syn::Error::new_spanned(&attr, "`#[weir_sdk::join]` takes no arguments");
        return with_errors(item, error);
    }
    if let Err(error) = check_join_signature(&function) {
        return with_errors(item, error);
    }
    let name = &function.sig.ident;
    let span = name.span();
    let check = quote_spanned! {span=>
        const _: ::weir_sdk::__private::JoinFn = #name;
    };
    let once = only_one_plugin(span);
    let guest = world_bindings(
        "join-enrichment",
        quote! {
            impl exports::weir::plugin::join::Guest for WeirSdkPlugin {
                fn enrich(request: ::weir_sdk::__private::JoinRequest) -> ::weir_sdk::__private::OutputBatch {
                    ::weir_sdk::__private::join_pairs(request, super::#name)
                }
            }
        },
    );
    quote! {
        #function
        #once
        #check
        #guest
    }
}

/// The checks that read well for a join function; the exact types are then checked by the
/// compiler against `JoinFn`, at the function's name.
fn check_join_signature(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    let expected = format!(
        "expected `fn {}(left: Option<&Event>, right: Option<&Event>, ctx: &mut Context) -> Result<()>`",
        sig.ident
    );
    let mut errors: Vec<syn::Error> = Vec::new();
    if let Some(asyncness) = &sig.asyncness {
        errors.push(syn::Error::new_spanned(
            asyncness,
            format!("a join function cannot be `async`; {expected}"),
        ));
    }
    if sig
        .generics
        .params
        .iter()
        .any(|p| !matches!(p, GenericParam::Lifetime(_)))
    {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            format!("a join function cannot be generic; {expected}"),
        ));
    }
    let args: Vec<&FnArg> = sig.inputs.iter().collect();
    match args.as_slice() {
        [left, right, ctx] => {
            for (arg, which) in [(left, "left"), (right, "right")] {
                if !is_option_of_reference(arg) {
                    errors.push(syn::Error::new_spanned(
                        arg,
                        format!(
                            "the {which} event of a pair may be absent (an unmatched event comes \
                             alone): `Option<&Event>`; {expected}"
                        ),
                    ));
                }
            }
            if !is_reference_to(ctx, true, "Context") {
                errors.push(syn::Error::new_spanned(
                    *ctx,
                    format!("the third argument of a join function is the context, `&mut Context`; {expected}"),
                ));
            }
        }
        _ => {
            let found = format!(
                "a join function takes three arguments, the left event, the right event and the \
                 context, not {}; {expected}",
                args.len()
            );
            if args.is_empty() {
                errors.push(syn::Error::new(sig.paren_token.span.join(), found));
            } else {
                errors.push(syn::Error::new_spanned(&sig.inputs, found));
            }
        }
    }
    if let ReturnType::Default = &sig.output {
        errors.push(syn::Error::new(
            sig.paren_token.span.close(),
            format!("a join function returns `Result<()>`; {expected}"),
        ));
    }
    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(mut first) => {
            for error in errors {
                first.combine(error);
            }
            Err(first)
        }
    }
}

/// Whether `arg` is typed `Option<&T>`.
fn is_option_of_reference(arg: &FnArg) -> bool {
    let FnArg::Typed(arg) = arg else {
        return false;
    };
    let Type::Path(path) = strip(&arg.ty) else {
        return false;
    };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    if last.ident != "Option" {
        return false;
    }
    match &last.arguments {
        PathArguments::AngleBracketed(args) => matches!(
            args.args.first(),
            Some(GenericArgument::Type(Type::Reference(reference))) if reference.mutability.is_none()
        ),
        _ => false,
    }
}

/// Marks the `impl Aggregate for Accumulator` of a window aggregate.
///
/// See `weir_sdk::window` for the documentation.
#[proc_macro_attribute]
pub fn window(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_window(attr.into(), item.into()).into()
}

fn expand_window(attr: TokenStream2, item: TokenStream2) -> TokenStream2 {
    const EXPECTED: &str = "`#[weir_sdk::window]` goes on the implementation of `Aggregate` for \
         your accumulator: `impl Aggregate for MyAccumulator { fn fold(..) .. fn finish(..) .. }`";
    let implementation = match syn::parse2::<ItemImpl>(item.clone()) {
        Ok(implementation) => implementation,
        Err(_) => {
            let error = syn::Error::new_spanned(&item, EXPECTED);
            return with_errors(item, error);
        }
    };
    if !attr.is_empty() {
        let error = syn::Error::new_spanned(&attr, "`#[weir_sdk::window]` takes no arguments");
        return with_errors(item, error);
    }
    let Some((_, trait_path, _)) = &implementation.trait_ else {
        let error = syn::Error::new_spanned(&implementation.self_ty, EXPECTED);
        return with_errors(item, error);
    };
    if trait_path
        .segments
        .last()
        .is_none_or(|segment| segment.ident != "Aggregate")
    {
        let error = syn::Error::new_spanned(
            trait_path,
            format!("{EXPECTED}; this implements another trait"),
        );
        return with_errors(item, error);
    }
    if !implementation.generics.params.is_empty() {
        let error = syn::Error::new_spanned(
            &implementation.generics,
            "the accumulator of a window aggregate cannot be generic: the host calls one \
             concrete type; implement `Aggregate` for a concrete type",
        );
        return with_errors(item, error);
    }
    let self_ty = &implementation.self_ty;
    let span = syn::spanned::Spanned::span(self_ty);
    let once = only_one_plugin(span);
    let alias = quote_spanned! {span=>
        #[doc(hidden)]
        type __WeirSdkAccumulator = #self_ty;
    };
    let guest = world_bindings(
        "window-aggregate",
        quote! {
            impl exports::weir::plugin::aggregate::Guest for WeirSdkPlugin {
                fn fold(request: ::weir_sdk::__private::FoldRequest) -> ::weir_sdk::__private::FoldResponse {
                    ::weir_sdk::__private::fold_windows::<super::__WeirSdkAccumulator>(request)
                }
                fn finish(request: ::weir_sdk::__private::FinishRequest) -> ::weir_sdk::__private::OutputBatch {
                    ::weir_sdk::__private::finish_windows::<super::__WeirSdkAccumulator>(request)
                }
            }
        },
    );
    quote! {
        #implementation
        #once
        #alias
        #guest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(item: TokenStream2) -> String {
        let out = expand(TokenStream2::new(), item).to_string();
        assert!(
            out.contains("compile_error"),
            "expected an error, got {out}"
        );
        out
    }

    #[test]
    fn accepts_plain_and_qualified_signatures() {
        for item in [
            quote! { fn process(event: &Event, ctx: &mut Context) -> Result<()> { Ok(()) } },
            quote! { fn f<'a>(_: &weir_sdk::Event<'a>, _c: &mut weir_sdk::Context) -> weir_sdk::Result<()> { Ok(()) } },
        ] {
            let out = expand(TokenStream2::new(), item).to_string();
            assert!(!out.contains("compile_error"), "{out}");
            assert!(out.contains("event-transform"), "{out}");
        }
    }

    #[test]
    fn rejects_wrong_signatures_with_the_expected_one() {
        let out = errors(quote! { fn process(event: &Event) -> Result<()> { Ok(()) } });
        assert!(out.contains("takes two arguments"), "{out}");
        assert!(
            out.contains("expected `fn process(event: &Event, ctx: &mut Context) -> Result<()>`")
        );
        let out =
            errors(quote! { fn process(event: Event, ctx: &mut Context) -> Result<()> { Ok(()) } });
        assert!(out.contains("first argument"), "{out}");
        let out =
            errors(quote! { fn process(event: &Event, ctx: &Context) -> Result<()> { Ok(()) } });
        assert!(out.contains("second argument"), "{out}");
        let out = errors(quote! { fn process(event: &Event, ctx: &mut Context) { } });
        assert!(out.contains("returns `Result<()>`"), "{out}");
        let out = errors(
            quote! { async fn process(event: &Event, ctx: &mut Context) -> Result<()> { Ok(()) } },
        );
        assert!(out.contains("cannot be `async`"), "{out}");
        let out = errors(
            quote! { fn process<T>(event: &Event, ctx: &mut Context) -> Result<()> { Ok(()) } },
        );
        assert!(out.contains("cannot be generic"), "{out}");
        let out = errors(quote! { struct NotAFunction; });
        assert!(out.contains("goes on a function"), "{out}");
    }

    #[test]
    fn rejects_arguments() {
        let out = expand(
            quote! { output = "x" },
            quote! { fn process(event: &Event, ctx: &mut Context) -> Result<()> { Ok(()) } },
        );
        assert!(out.to_string().contains("takes no arguments"));
    }
}
