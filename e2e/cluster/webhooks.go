package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// WebhookSelectors are the selectors a Retarget may set on one webhook.
type WebhookSelectors struct {
	Namespace, Object **metav1.LabelSelector
}

// Retarget decides, per webhook of a shipped configuration (by its service
// path), whether it is registered, and may narrow its selectors.
type Retarget func(servicePath string, sel WebhookSelectors) bool

// Webhooks is a controller's shipped webhook manifest (the
// MutatingWebhookConfiguration and ValidatingWebhookConfiguration
// documents of its release) to register against a controller that runs as
// a host process: each kept webhook is pointed at BaseURL plus its service
// path, trusting CAPEM, under the given configuration names.
type Webhooks struct {
	Manifest                     string
	BaseURL                      string
	CAPEM                        []byte
	MutatingName, ValidatingName string
	Keep                         Retarget
}

// RegisterWebhooks creates (or replaces) the configurations and returns
// a function that deletes them. Webhooks without a service path are an
// error: a release that points them elsewhere needs a look.
func RegisterWebhooks(ctx context.Context, client kubernetes.Interface, w Webhooks) (remove func(context.Context) error, err error) {
	raw, err := os.ReadFile(w.Manifest)
	if err != nil {
		return nil, err
	}
	hooks := client.AdmissionregistrationV1()
	var created []func(context.Context) error
	remove = func(ctx context.Context) error {
		var errs []error
		for _, del := range created {
			if err := del(ctx); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	retarget := func(name string, cc *admissionv1.WebhookClientConfig, sel WebhookSelectors) (bool, error) {
		if cc.Service == nil || cc.Service.Path == nil {
			return false, fmt.Errorf("%s: webhook %s has no service path", w.Manifest, name)
		}
		path := *cc.Service.Path
		if w.Keep != nil && !w.Keep(path, sel) {
			return false, nil
		}
		u := w.BaseURL + path
		cc.Service, cc.URL, cc.CABundle = nil, &u, w.CAPEM
		return true, nil
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return remove, fmt.Errorf("%s: %w", w.Manifest, err)
		}
		if doc == nil {
			continue
		}
		b, err := yaml.Marshal(doc)
		if err != nil {
			return remove, err
		}
		switch doc["kind"] {
		case "MutatingWebhookConfiguration":
			var c admissionv1.MutatingWebhookConfiguration
			if err := yaml.UnmarshalStrict(b, &c); err != nil {
				return remove, fmt.Errorf("%s: %w", w.Manifest, err)
			}
			c.ObjectMeta = metav1.ObjectMeta{Name: w.MutatingName}
			if c.Webhooks, err = keptWebhooks(c.Webhooks, func(h *admissionv1.MutatingWebhook) (bool, error) {
				return retarget(h.Name, &h.ClientConfig, WebhookSelectors{Namespace: &h.NamespaceSelector, Object: &h.ObjectSelector})
			}); err != nil {
				return remove, err
			}
			api := hooks.MutatingWebhookConfigurations()
			if err := createOrReplace(ctx, &c, api.Create, api.Get, api.Update); err != nil {
				return remove, err
			}
			created = append(created, func(ctx context.Context) error { return api.Delete(ctx, c.Name, metav1.DeleteOptions{}) })
		case "ValidatingWebhookConfiguration":
			var c admissionv1.ValidatingWebhookConfiguration
			if err := yaml.UnmarshalStrict(b, &c); err != nil {
				return remove, fmt.Errorf("%s: %w", w.Manifest, err)
			}
			c.ObjectMeta = metav1.ObjectMeta{Name: w.ValidatingName}
			if c.Webhooks, err = keptWebhooks(c.Webhooks, func(h *admissionv1.ValidatingWebhook) (bool, error) {
				return retarget(h.Name, &h.ClientConfig, WebhookSelectors{Namespace: &h.NamespaceSelector, Object: &h.ObjectSelector})
			}); err != nil {
				return remove, err
			}
			api := hooks.ValidatingWebhookConfigurations()
			if err := createOrReplace(ctx, &c, api.Create, api.Get, api.Update); err != nil {
				return remove, err
			}
			created = append(created, func(ctx context.Context) error { return api.Delete(ctx, c.Name, metav1.DeleteOptions{}) })
		}
	}
	return remove, nil
}

// keptWebhooks retargets each webhook of a configuration in place and keeps
// those retarget accepts (mutating and validating webhooks are distinct
// types with the same fields).
func keptWebhooks[W any](hooks []W, retarget func(*W) (bool, error)) ([]W, error) {
	var kept []W
	for i := range hooks {
		ok, err := retarget(&hooks[i])
		if err != nil {
			return nil, err
		}
		if ok {
			kept = append(kept, hooks[i])
		}
	}
	return kept, nil
}

// createOrReplace creates obj, or replaces the object of that name (a
// cluster brought up again over its old state must not keep stale URLs or
// CA bundles).
func createOrReplace[T interface {
	*admissionv1.MutatingWebhookConfiguration | *admissionv1.ValidatingWebhookConfiguration
	metav1.Object
}](ctx context.Context, obj T,
	create func(context.Context, T, metav1.CreateOptions) (T, error),
	get func(context.Context, string, metav1.GetOptions) (T, error),
	update func(context.Context, T, metav1.UpdateOptions) (T, error)) error {
	if _, err := create(ctx, obj, metav1.CreateOptions{}); !apierrors.IsAlreadyExists(err) {
		return err
	}
	old, err := get(ctx, obj.GetName(), metav1.GetOptions{})
	if err != nil {
		return err
	}
	obj.SetResourceVersion(old.GetResourceVersion())
	_, err = update(ctx, obj, metav1.UpdateOptions{})
	return err
}
